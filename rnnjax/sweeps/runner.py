"""The sweep runner: every trial of a study as an ``rnnjax train`` process, resumably.

Trials run as separate processes (``python -m rnnjax train ...``) on an executor
(:mod:`rnnjax.sweeps.executors`: a local pool of ``workers``, Ray tasks or SLURM jobs),
each in its own run directory (:class:`rnnjax.train.workdir.Workdir`). A done
trial is skipped; an interrupted one is started again and the trainer resumes it
from its checkpoints; a failing one gets ``failed.json`` (return code and the tail
of its stderr) and the others go on. ``<root>/sweep.json`` lists every trial and
its status. An Optuna study (:mod:`rnnjax.sweeps.search`) runs through the same
executors, its trials asked of the sampler as slots free.

With ``vmap_seeds=True`` the trials that differ only in ``seed`` (and ``optim.lr``)
and stand at the same checkpoint step run together as one ``rnnjax train`` process
with one ``--workdir``/``--member`` pair per trial: the trainer vmaps its one loop
over them, and each member keeps its own checkpoints, resume and failure record.

A study with an ``eval_grid`` adds, to each job, one ``rnnjax eval --record`` per trial
and combination not yet evaluated, run after the training in the same job (on every
executor). A trial is skipped only when it is trained *and* every evaluation is done;
a trained trial with evaluations to do runs ``rnnjax train`` again, which only confirms
that it is finished, then the missing evaluations. An evaluation that fails has its
record (``evals/<name>.json``, status ``failed``) written by ``rnnjax eval``, or here
from the job's stderr when the process died without writing it; the next sweep
retries it. Evaluations run only after a training that exited 0: a vmapped group with a
diverged member exits non-zero, and its finished members' evaluations wait for the next
sweep (which runs them, the finished members in a job of their own).

This module never imports models or cells: trials are processes, results files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from rnnjax.sweeps.executors import EXECUTORS, Executor, Job, Monitor, Outcome, get_executor
from rnnjax.sweeps.search import OptunaSource
from rnnjax.sweeps.study import (
    SWEEP_FILE,
    VMAP_KEYS,
    Study,
    Trial,
    expand,
    format_cli_value,
    load_study,
)
from rnnjax.train.workdir import Workdir


def trial_status(workdir: str | Path) -> str:
    """``done`` | ``failed`` | ``started`` (a workdir without results) | ``pending``."""
    return Workdir(workdir).status()


def eval_names(trial: Trial) -> list[str]:
    """The record names of the trial's evaluations, in the eval grid's order."""
    return [Workdir.eval_name(trial.eval_checkpoint, trial.eval_args(e))
            for e in trial.evaluations]


def pending_evaluations(trial: Trial) -> list[dict[str, Any]]:
    """The trial's eval-grid combinations without an up-to-date ``done`` record."""
    wd = Workdir(trial.workdir)
    return [e for e, name in zip(trial.evaluations, eval_names(trial))
            if wd.eval_status(name) != "done"]


def eval_counts(trial: Trial) -> dict[str, int]:
    """``{"done": n, "failed": n, "pending": n}`` over the trial's evaluations."""
    wd = Workdir(trial.workdir)
    counts = {"done": 0, "failed": 0, "pending": 0}
    for name in eval_names(trial):
        counts[wd.eval_status(name)] += 1
    return counts


def needs_work(trial: Trial) -> bool:
    """Not trained yet, or trained with evaluations still to do."""
    return trial_status(trial.workdir) != "done" or bool(pending_evaluations(trial))


def _tail(path: Path, chars: int = 4000) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - chars))
        return f.read().decode("utf-8", "replace")


class _Book:
    """The sweep's trial table, ``root/sweep.json``.

    Rewritten at most every ``min_interval`` seconds, longer for a big table (and by
    :meth:`flush` at the end):
    rewriting it after every status change costs O(trials) bytes per change, O(trials²)
    per sweep, 150 GB for 10,000 trials (docs/cluster.md). Each trial's own workdir is
    the truth; this file is the overview.
    """

    def __init__(self, study: Study, root: Path, trials: list[Trial], *, kind: str = "fixed",
                 min_interval: float = 2.0):
        self.path = root / SWEEP_FILE
        self.lock = threading.Lock()
        self.min_interval = min_interval
        self.head = {"study": study.name, "study_file": str(study.path) if study.path else None,
                     "arg": study.arg, "base": study.base, "root": str(root), "kind": kind}
        self.rows: dict[str, dict] = {}
        for t in trials:
            self.add(t)
        self.last = -math.inf
        self.wait = min_interval
        self.writes = 0
        self.flush()

    def add(self, trial: Trial) -> None:
        with self.lock:
            if trial.name not in self.rows:
                row = {**trial.to_json(), "status": trial_status(trial.workdir), "ran": False}
                if trial.evaluations:
                    row["evals"] = eval_counts(trial)
                self.rows[trial.name] = row
                self.dirty = True

    def update(self, name: str, **fields) -> None:
        with self.lock:
            self.rows[name].update(fields)
            self.dirty = True
            if time.monotonic() - self.last >= self.wait:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def data(self) -> dict:
        counts: dict[str, int] = {}
        evals: dict[str, int] = {}
        for r in self.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            for k, n in r.get("evals", {}).items():
                evals[k] = evals.get(k, 0) + n
        out = {**self.head, "updated": time.time(), "counts": counts}
        if evals:  # an eval grid: its evaluations' statuses, summed over the trials
            out["eval_counts"] = {k: n for k, n in evals.items() if n}
        return {**out, "trials": list(self.rows.values())}

    def _write(self) -> None:
        text = json.dumps(self.data(), indent=1, default=str)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        self.last = time.monotonic()
        # A big table waits longer: at most ~100 kB/s of rewrites (6 MB for 10,000 trials:
        # once a minute), so a sweep writes O(its duration) bytes, not O(trials²).
        self.wait = max(self.min_interval, len(text) / 1e5)
        self.dirty = False
        self.writes += 1

    def summary(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.data(), default=str))


def _finish(book: _Book, trial: Trial, outcome: Outcome, seconds: float,
            cmd: list[str], err_path: Path) -> str:
    """The trial's status after its job ended, recorded in its workdir and the book."""
    wd = Workdir(trial.workdir)
    status = wd.status()
    rc = outcome.returncode
    if rc is None:  # never started: the sweep was interrupted first
        book.update(trial.name, status=status)
        return status
    if outcome.pruned and status != "done":
        # Stopped by its search's pruner: its checkpoint stays; not a failure. A trial whose
        # results say done had finished before the stop landed (the pruner judged its
        # last eval while the trainer was writing its results): it counts as done.
        book.update(trial.name, status="pruned", returncode=rc, seconds=round(seconds, 2),
                    ran=True)
        return "pruned"
    if status != "done":
        # A member that diverged has recorded its own failure (with its step) already.
        if wd.read_failure() is None:
            tail = _tail(err_path)
            lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
            first = lines[-1] if lines else (outcome.note or f"return code {rc}")
            wd.record_failure(first, returncode=rc, timed_out=outcome.timed_out, command=cmd,
                              stderr_tail=tail, stderr_path=str(err_path),
                              engine_error=outcome.note)
        status = "failed"
        info = wd.read_failure() or {}
        book.update(trial.name, error=str(info.get("error", ""))[:300], log=str(err_path))
    book.update(trial.name, status=status, returncode=rc, seconds=round(seconds, 2), ran=True)
    return status


def _finish_evals(book: _Book, unit: Unit, outcome: Outcome, err_path: Path) -> None:
    """Each evaluation the job was to run: a process that died without writing its record
    (killed, out of memory) gets a failure record from the job's stderr; one that never
    ran (its training failed, the sweep stopped) stays pending."""
    codes = list(outcome.then_returncodes) + [None] * (len(unit.evals) - len(
        outcome.then_returncodes))
    for (trial, evaluation), rc, command in zip(unit.evals, codes, unit.job.then):
        wd = Workdir(trial.workdir)
        name = Workdir.eval_name(trial.eval_checkpoint, trial.eval_args(evaluation))
        if rc is not None and wd.eval_status(name) == "pending":
            tail = _tail(err_path)
            why = "timed out" if outcome.timed_out and rc != 0 else f"return code {rc}"
            wd.record_eval_failure(f"rnnjax eval ended ({why}) without recording a result",
                                   returncode=rc, timed_out=outcome.timed_out,
                                   command=command, stderr_tail=tail,
                                   stderr_path=str(err_path), checkpoint=trial.eval_checkpoint,
                                   override_args=trial.eval_args(evaluation))
    for trial in unit.trials:
        if not trial.evaluations:
            continue
        wd = Workdir(trial.workdir)
        errors = []
        for name in eval_names(trial):
            if wd.eval_status(name) == "failed":
                errors.append({"eval": name,
                               "error": str((wd.read_eval(name) or {}).get("error", ""))[:300]})
        book.update(trial.name, evals=eval_counts(trial), eval_errors=errors)


@dataclasses.dataclass
class Unit:
    """One job, the trials it trains (one, or a vmapped seed group) and the evaluations it
    runs after the training (``(trial, combination)``, one per ``job.then`` command)."""

    job: Job
    trials: list[Trial]
    what: str
    evals: list[tuple[Trial, dict]] = dataclasses.field(default_factory=list)


def _with_evals(unit: Unit, python: str) -> Unit:
    """Adds an ``rnnjax eval --record`` to the job for every evaluation still to do."""
    unit.evals = [(t, e) for t in unit.trials for e in pending_evaluations(t)]
    unit.job.then = [t.eval_command(e, python) for t, e in unit.evals]
    if unit.evals:
        unit.what += f" (+{len(unit.evals)} evaluations)"
    return unit


def trial_unit(trial: Trial, python: str, timeout: float | None,
               monitor: Monitor | None = None) -> Unit:
    wd = Workdir(trial.workdir)
    return _with_evals(Unit(Job(trial.name, trial.command(python), wd.stdout_path,
                                wd.stderr_path, timeout, monitor), [trial], trial.name), python)


def group_unit(group: list[Trial], python: str, timeout: float | None) -> Unit:
    # The group's process output goes to its first member's workdir; every member's
    # failure record points there.
    wd = Workdir(group[0].workdir)
    return _with_evals(Unit(Job(group[0].name, group_command(group, python), wd.stdout_path,
                                wd.stderr_path, timeout), list(group),
                            f"vmapped group of {len(group)}: {group[0].name} ..."), python)


class _Fixed:
    """A study whose trials are all known before it runs (grid, random, list)."""

    limit = None  # hand every job over at once: the executor queues them

    def __init__(self, units: list[Unit]):
        self.units = units

    def take(self, n: int | None) -> list[Unit]:
        out, self.units = self.units, []
        return out

    def done(self, unit: Unit, outcome: Outcome, statuses: list[str]) -> None:
        pass


def group_command(group: Sequence[Trial], python: str = sys.executable) -> list[str]:
    """One ``rnnjax train`` for a vmapped group: the shared overrides once, then one
    ``--workdir``/``--member`` pair per trial with its seed and lr."""
    t0 = group[0]
    cmd = [python, "-m", "rnnjax", "train", "--config", t0.spec]
    cmd += [f"--config.{k}={format_cli_value(v)}" for k, v in t0.config_overrides.items()
            if k not in VMAP_KEYS]
    for t in group:
        member = ",".join(f"{k}={format_cli_value(v)}" for k, v in t.config_overrides.items()
                          if k in VMAP_KEYS)
        cmd += ["--workdir", str(t.workdir), "--member", member]
    return cmd + ["--no-progress"]


def vmap_groups(trials: Sequence[Trial]) -> list[list[Trial]]:
    """Trials that differ only in ``seed``/``optim.lr``, share a config spec and stand at
    the same checkpoint step (none, or the step they were saved at together), grouped."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        key = json.dumps({"spec": t.spec, "o": {k: v for k, v in t.config_overrides.items()
                                                 if k not in VMAP_KEYS},
                          "step": Workdir(t.workdir).latest_checkpoint_step()},
                         sort_keys=True, default=repr)
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def _drive(ex: Executor, source, book: _Book, log: Callable[[str], None]) -> None:
    """Hands the source's jobs to the executor and books each one as it ends."""
    units: dict[str, Unit] = {}
    started: dict[str, float] = {}

    def on_start(job: Job) -> None:
        unit = units[job.key]
        for t in unit.trials:
            Workdir(t.workdir).create().clear_failure()  # a retry starts without the old record
            book.update(t.name, status="running", vmapped=len(unit.trials) > 1)
        started[job.key] = time.perf_counter()
        log(f"[sweep] start  {unit.what}")

    in_flight: dict[Future, Unit] = {}
    while True:
        free = None if source.limit is None else source.limit - len(in_flight)
        new = source.take(free) if free is None or free > 0 else []
        for u in new:
            units[u.job.key] = u
            for t in u.trials:
                book.add(t)
        if new:
            in_flight.update(zip(ex.submit([u.job for u in new], on_start), new))
        if not in_flight:
            return
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for f in finished:
            unit = in_flight.pop(f)
            try:
                outcome = f.result()
            except Exception as e:  # the engine lost the job: a failed trial, others go on
                outcome = Outcome(-1, note=f"{ex.name} executor: {type(e).__name__}: {e}")
            seconds = time.perf_counter() - started.get(unit.job.key, time.perf_counter())
            statuses = [_finish(book, t, outcome, seconds, unit.job.command, unit.job.stderr)
                        for t in unit.trials]
            if unit.evals:
                _finish_evals(book, unit, outcome, unit.job.stderr)
            for t, status in zip(unit.trials, statuses):
                evals = book.rows[t.name].get("evals")
                extra = (", evaluations " + ", ".join(f"{n} {k}" for k, n in evals.items() if n)
                         if evals else "")
                log(f"[sweep] {status:6s} {t.name} ({seconds:.1f}s{extra})")
            source.done(unit, outcome, statuses)


def run_sweep(study: str | Path | Study, root: str | Path | None = None, *, workers: int = 1,
              smoke: bool = False, vmap_seeds: bool = False, timeout: float | None = None,
              python: str = sys.executable, log: Callable[[str], None] | None = None,
              executor: str | Executor = "local",
              executor_options: dict[str, Any] | None = None) -> dict:
    """Runs every trial of ``study`` that is not done; returns the ``sweep.json`` content.

    Args:
      study: ``experiments/x.py[:arg]`` or a loaded :class:`Study`.
      root: the sweep root (default ``runs/<study name>``).
      workers: trials (processes) run at once (local; the array parallelism on SLURM;
        the trials in flight of an Optuna search).
      smoke: run the study's ``smoke`` variant.
      vmap_seeds: run trials that differ only in seed (and lr) as one vmapped process.
      timeout: seconds per trial (or vmapped group) before it is stopped and marked failed.
      executor: ``local`` | ``ray`` | ``slurm`` (:mod:`rnnjax.sweeps.executors`), or an
        :class:`Executor`.
      executor_options: the executor's options (``address``, ``cpus_per_trial``, ...).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not isinstance(study, Study):
        study = load_study(study, smoke=smoke)
    elif smoke:
        raise ValueError("smoke=True needs a study spec, not a loaded Study; load it with "
                         "load_study(spec, smoke=True)")
    root = Path(root) if root is not None else study.default_root()
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; known: {sorted(EXECUTORS)}")
        opts = dict(executor_options or {})
        if EXECUTORS[executor].remote:
            root = root.resolve()  # workers elsewhere see the same absolute paths
        if executor == "slurm":
            opts.setdefault("folder", root / ".submitit")
            opts.setdefault("timeout", timeout)
        ex = get_executor(executor, workers=workers, **opts)
    else:
        ex = executor
        if ex.remote:
            root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if study.optuna is not None:
        if vmap_seeds:
            raise ValueError(f"study {study.name} is an Optuna search: each trial is one "
                             f"process; drop vmap_seeds")
        source = OptunaSource(study, root, python=python, timeout=timeout, workers=workers,
                              log=log)
        trials = source.known_trials()
        book = _Book(study, root, trials, kind="optuna")
        for name, status in source.known_statuses().items():
            book.update(name, status=status)
        log(f"[sweep] {study.name}: Optuna search, {source.n_trials} trials, {len(trials)} in "
            f"the storage {source.storage_url}; {workers} at a time on {ex.name}")
    else:
        trials = expand(study, root)
        book = _Book(study, root, trials)
        todo = [t for t in trials if needs_work(t)]
        if study.eval_grid:
            trained = sum(trial_status(t.workdir) == "done" for t in trials)
            evals = sum(len(pending_evaluations(t)) for t in todo)
            log(f"[sweep] {study.name}: {len(trials)} trials x {len(trials[0].evaluations)} "
                f"evaluations, {trained} trained, {len(trials) - trained} to train and "
                f"{evals} evaluations to run in {root} with {workers} worker(s) on {ex.name}")
        else:
            log(f"[sweep] {study.name}: {len(trials)} trials, {len(trials) - len(todo)} done, "
                f"{len(todo)} to run in {root} with {workers} worker(s) on {ex.name}")
        if vmap_seeds:
            units = [trial_unit(g[0], python, timeout) if len(g) == 1
                     else group_unit(g, python, timeout) for g in vmap_groups(todo)]
        else:
            units = [trial_unit(t, python, timeout) for t in todo]
        source = _Fixed(units)
    with ex:
        try:
            _drive(ex, source, book, log)
        except KeyboardInterrupt:
            # Stop the children this sweep started (SIGTERM: the trainer checkpoints first).
            ex.stop()
            by_name = {t.name: t for t in trials}
            for name, row in book.rows.items():
                if row["status"] == "running":
                    book.update(name, status=trial_status(row["workdir"]))
                    if name in by_name and by_name[name].evaluations:
                        book.update(name, evals=eval_counts(by_name[name]))
            book.flush()
            raise
    book.flush()
    return book.summary()
