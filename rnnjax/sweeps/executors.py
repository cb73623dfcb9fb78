"""Executors: where a sweep's ``rnnjax train`` processes run. One interface, three engines.

A sweep hands an executor :class:`Job` s: one ``rnnjax train`` command line (one trial,
or a vmapped seed group) with the paths its output goes to, and the ``rnnjax eval``
command lines that follow it when the study has an eval grid. The executor runs the
commands one after another as subprocesses *somewhere* (so a trial's evaluations run
in its job, where it trained) and gives back an :class:`Outcome` (return codes, timed
out, pruned) through a ``concurrent.futures.Future``. Everything else a sweep
guarantees (hashed workdirs, skipping done trials, resuming started ones, failure
records with stderr, ``sweep.json``) is the runner's, from the run directories, and so
is the same on every engine:

=========  ==========================================================================
``local``  a thread pool of ``workers`` on this machine (the default).
``ray``    each job a Ray task (``num_cpus``/``num_gpus`` per trial) that runs the same
           command as a subprocess; ``address`` joins a running cluster, else a local
           instance is started (and stopped at the end).
``slurm``  each job a SLURM job through submitit, the whole sweep as one job array (one
           ``sbatch`` call); ``cluster="local"``/``"debug"`` are submitit's local and
           in-process executors, for tests and laptops.
=========  ==========================================================================

Executors are looked up by name (:func:`get_executor`); the optional engines are
imported only when chosen, and a missing one names the ``cluster`` extra. Workers on
other machines need the sweep root on a shared file system: the runner gives them
absolute paths.

This module never imports models, cells or the trainer: jobs are command lines.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Protocol

#: The pip extra that installs the optional engines.
EXTRA = "cluster"
#: Seconds between looks at a running job (its monitor, its timeout).
POLL_S = 1.0


class Monitor(Protocol):
    """Watches a running job from where it runs (e.g. Optuna pruning); picklable."""

    def should_stop(self) -> bool:
        """True to stop the job now (SIGTERM: the trainer saves and exits)."""


@dataclasses.dataclass
class Job:
    """One ``rnnjax train`` process (a trial or a vmapped group of trials), then ``then``.

    ``then`` (a trial's ``rnnjax eval --record`` commands) runs only after ``command``
    exited 0, one after another, each whatever the others return (each records its own
    result); they write to the same ``stdout``/``stderr`` and share the job's ``timeout``.
    """

    key: str  # unique in the sweep: the (first) trial's name
    command: list[str]
    stdout: Path
    stderr: Path
    timeout: float | None = None  # seconds for the whole job, then SIGTERM (the trainer
    # checkpoints)
    monitor: Monitor | None = None  # watches ``command`` only
    then: list[list[str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outcome:
    """How a job ended. ``returncode`` None: it never started (the sweep was stopping).

    ``then_returncodes``: one per ``Job.then`` command, None where it did not run (the
    training failed, the job timed out or the sweep was stopping first).
    """

    returncode: int | None
    timed_out: bool = False
    pruned: bool = False  # its monitor stopped it
    note: str | None = None  # the engine's own error (could not start, worker lost)
    then_returncodes: list[int | None] = dataclasses.field(default_factory=list)


def require(module: str, what: str):
    """Imports an optional engine, or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the {module!r} package, which is not installed. Install the "
            f"optional engines with: pip install 'rnnjax[{EXTRA}]' (ray, submitit, optuna)"
        ) from e


def _stop(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM (the trainer saves a checkpoint and exits), then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Procs:
    """The child processes started here, so an interrupt can stop exactly them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, job: Job) -> Outcome:
        deadline = None if job.timeout is None else time.monotonic() + job.timeout
        with open(job.stdout, "ab") as fo, open(job.stderr, "ab") as fe:
            ran = self._one(job.command, fo, fe, deadline, job.monitor)
            if ran is None:
                return Outcome(None)
            rc, timed_out, pruned = ran
            then: list[int | None] = []
            for command in job.then:
                if rc != 0 or timed_out or pruned:
                    then.append(None)
                    continue
                # Output of each follow-up starts on a line that names it.
                fe.write(f"\n[rnnjax sweep] {' '.join(command[2:])}\n".encode())
                fe.flush()
                ran = self._one(command, fo, fe, deadline, None)
                if ran is None:
                    then.append(None)
                    continue
                then.append(ran[0])
                timed_out = ran[1]
        return Outcome(rc, timed_out=timed_out, pruned=pruned, then_returncodes=then)

    def _one(self, command: list[str], fo, fe, deadline: float | None,
             monitor: Monitor | None) -> tuple[int, bool, bool] | None:
        """Runs one command to its end: ``(returncode, timed out, pruned)``; None if the
        executor was stopping before it started."""
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(command, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
            self.live.add(proc)
        timed_out = pruned = False
        try:
            while True:
                wait = POLL_S if monitor is not None else None
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    wait = left if wait is None else min(wait, left)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    _stop(proc)
                    break
                if monitor is not None and monitor.should_stop():
                    pruned = True
                    _stop(proc)
                    break
        except BaseException:
            # Ctrl-C here, or a Ray/submitit cancel: the child checkpoints and stops.
            _stop(proc)
            raise
        finally:
            with self.lock:
                self.live.discard(proc)
        return proc.returncode, timed_out, pruned

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def run_job(job: Job) -> Outcome:
    """Runs one job to its end where this is called (a Ray task, a SLURM job)."""
    Path(job.stderr).parent.mkdir(parents=True, exist_ok=True)
    try:
        return _Procs().run(job)
    except OSError as e:  # could not start the process at all: this job fails
        with open(job.stderr, "a") as f:
            f.write(f"could not start {job.command}: {e}\n")
        return Outcome(-1, note=str(e))


# ---------------------------------------------------------------------------
# The interface and its registry.
# ---------------------------------------------------------------------------
class Executor(abc.ABC):
    """Runs jobs; a context manager that starts and stops its engine.

    ``submit`` returns one future per job, resolved with the job's :class:`Outcome`
    (or an exception when the engine lost it). ``on_start(job)`` is called when a
    job starts, or, where the engine does not say, when it is handed over.
    """

    name: ClassVar[str]
    #: Jobs may run on other machines: the runner passes absolute paths.
    remote: ClassVar[bool] = True

    def __init__(self, *, workers: int = 1, **options: Any):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise ValueError(f"executor {self.name!r}: unknown options {unknown}; known: "
                             f"{sorted(self.options())}")
        self.workers = workers
        self.opts = {**self.options(), **options}

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The options this executor takes, with their defaults."""
        return {}

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abc.abstractmethod
    def start(self) -> None:
        """Starts or joins the engine."""

    @abc.abstractmethod
    def close(self) -> None:
        """Waits for nothing more; releases the engine if this executor started it."""

    @abc.abstractmethod
    def submit(self, jobs: Sequence[Job], on_start: Callable[[Job], None]
               ) -> list[Future]:
        """Hands ``jobs`` to the engine: one future per job."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stops every job this executor started (SIGTERM first: trials checkpoint)."""


EXECUTORS: dict[str, type[Executor]] = {}


def register(cls: type[Executor]) -> type[Executor]:
    EXECUTORS[cls.name] = cls
    return cls


def get_executor(name: str, *, workers: int = 1, **options: Any) -> Executor:
    """The executor called ``name``; an unknown name lists the known ones."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}")
    return EXECUTORS[name](workers=workers, **options)


# ---------------------------------------------------------------------------
# The engines.
# ---------------------------------------------------------------------------
@register
class LocalExecutor(Executor):
    """``workers`` subprocesses at a time on this machine, through a thread pool."""

    name = "local"
    remote = False

    def start(self) -> None:
        self.procs = _Procs()
        self.pool = ThreadPoolExecutor(max_workers=self.workers)

    def _run(self, job: Job, on_start: Callable[[Job], None]) -> Outcome:
        if self.procs.stopping:
            return Outcome(None)
        on_start(job)
        try:
            return self.procs.run(job)
        except OSError as e:  # could not start the process: this one fails, others go on
            with open(job.stderr, "a") as f:
                f.write(f"could not start {job.command}: {e}\n")
            return Outcome(-1, note=str(e))

    def submit(self, jobs, on_start):
        return [self.pool.submit(self._run, job, on_start) for job in jobs]

    def stop(self) -> None:
        self.procs.stop_all()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@register
class RayExecutor(Executor):
    """Each job a Ray task running the command as a subprocess.

    Options: ``address`` (a running cluster, e.g. ``ray://head:10001`` or ``auto``; none
    starts a local instance), ``cpus_per_trial``, ``gpus_per_trial`` (Ray sets
    ``CUDA_VISIBLE_DEVICES`` for the task, and the trial inherits it), ``init_kwargs``
    (more ``ray.init`` arguments, e.g. ``runtime_env``). Concurrency is what the
    cluster's resources allow. A Ray session that was already initialised is used
    as it is and left running.
    """

    name = "ray"

    @classmethod
    def options(cls):
        return {"address": None, "cpus_per_trial": 1, "gpus_per_trial": 0, "init_kwargs": None}

    def start(self) -> None:
        self.ray = require("ray", "the ray executor")
        self.owns = not self.ray.is_initialized()
        if self.owns:
            self.ray.init(address=self.opts["address"], include_dashboard=False,
                          **(self.opts["init_kwargs"] or {}))
        # max_retries=0: a trial that crashed is a failed trial, recorded, not re-run
        # behind the sweep's back (the next `rnnjax sweep` retries it, resuming).
        self.task = self.ray.remote(num_cpus=self.opts["cpus_per_trial"],
                                    num_gpus=self.opts["gpus_per_trial"],
                                    max_retries=0)(run_job)
        self.refs: list = []

    def submit(self, jobs, on_start):
        futures = []
        for job in jobs:
            on_start(job)
            ref = self.task.remote(job)
            self.refs.append(ref)
            futures.append(ref.future())
        return futures

    def stop(self) -> None:
        # Not force: the task gets KeyboardInterrupt and SIGTERMs its trial (checkpoint).
        for ref in self.refs:
            try:
                self.ray.cancel(ref, force=False)
            except Exception:  # already finished
                pass

    def close(self) -> None:
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


@register
class SlurmExecutor(Executor):
    """Each job a SLURM job through submitit; a sweep's jobs go in as one job array.

    Options: ``partition``, ``cpus_per_trial``, ``gpus_per_trial``, ``mem_gb``,
    ``time_min`` (the job's wall limit; default the sweep's timeout plus 5 minutes,
    else 24 hours), ``folder`` (submitit's logs and pickles; default
    ``<root>/.submitit``), ``cluster`` (``slurm``; ``local`` or ``debug`` for
    submitit's local executors), ``slurm`` (a dict of more ``slurm_*`` parameters,
    e.g. ``{"account": "abc", "qos": "high"}``). At most ``workers`` jobs of the
    array run at once (``slurm_array_parallelism``).
    """

    name = "slurm"

    @classmethod
    def options(cls):
        return {"partition": None, "cpus_per_trial": 1, "gpus_per_trial": 0, "mem_gb": None,
                "time_min": None, "folder": None, "cluster": "slurm", "slurm": None,
                "timeout": None}

    def start(self) -> None:
        submitit = require("submitit", "the slurm executor")
        folder = self.opts["folder"]
        if folder is None:
            raise ValueError("the slurm executor needs a folder for submitit's files "
                             "(run_sweep passes <root>/.submitit)")
        self.ex = submitit.AutoExecutor(folder=folder, cluster=self.opts["cluster"])
        time_min = self.opts["time_min"]
        if time_min is None:
            timeout = self.opts["timeout"]
            time_min = 24 * 60 if timeout is None else math.ceil(timeout / 60) + 5
        params: dict[str, Any] = {"timeout_min": int(time_min),
                                  "cpus_per_task": self.opts["cpus_per_trial"],
                                  "name": "rnnjax-sweep"}
        if self.opts["gpus_per_trial"]:
            params["gpus_per_node"] = self.opts["gpus_per_trial"]
        if self.opts["mem_gb"] is not None:
            params["mem_gb"] = self.opts["mem_gb"]
        slurm = {"partition": self.opts["partition"], "array_parallelism": self.workers,
                 **(self.opts["slurm"] or {})}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        self.ex.update_parameters(**params)
        self.jobs: list = []
        self.waiting: list[tuple[Any, Future]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def submit(self, jobs, on_start):
        jobs = list(jobs)
        if not jobs:
            return []
        # One array: one sbatch call for all of them, not one per trial.
        with self.ex.batch():
            handles = [self.ex.submit(run_job, job) for job in jobs]
        futures = []
        for job, handle in zip(jobs, handles):
            on_start(job)
            fut: Future = Future()
            futures.append(fut)
            with self.lock:
                self.jobs.append(handle)
                self.waiting.append((handle, fut))
        return futures

    def _poll(self) -> None:
        # One thread for all jobs: submitit's watcher asks sacct about all of them at once.
        while not self.closed:
            with self.lock:
                waiting = list(self.waiting)
            for handle, fut in waiting:
                try:
                    if not handle.done():
                        continue
                    fut.set_result(handle.result())
                except Exception as e:  # the job failed outside our function, or was lost
                    fut.set_exception(e)
                with self.lock:
                    self.waiting.remove((handle, fut))
            time.sleep(POLL_S)

    def stop(self) -> None:
        with self.lock:
            handles = list(self.jobs)
        for h in handles:
            try:
                h.cancel(check=False)  # scancel: SIGTERM to the trial, which checkpoints
            except Exception:
                pass

    def close(self) -> None:
        self.closed = True
