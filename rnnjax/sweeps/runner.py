"""The sweep runner: every trial of a study as an ``rnnjax train`` process, resumably.

Trials run as separate processes (``python -m rnnjax train ...``), ``workers`` at a
time, each in its own run directory (:class:`rnnjax.train.workdir.Workdir`). A done
trial is skipped; an interrupted one is started again and the trainer resumes it
from its checkpoints; a failing one gets ``failed.json`` (return code and the tail
of its stderr) and the others go on. ``<root>/sweep.json`` lists every trial and
its status.

With ``vmap_seeds=True`` the trials that differ only in ``seed`` (and ``optim.lr``)
and stand at the same checkpoint step run together as one ``rnnjax train`` process
with one ``--workdir``/``--member`` pair per trial: the trainer vmaps its one loop
over them, and each member keeps its own checkpoints, resume and failure record.

This module never imports models or cells: trials are processes, results files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rnnjax.sweeps.study import VMAP_KEYS, Study, Trial, expand, format_cli_value, load_study
from rnnjax.train.workdir import Workdir


def trial_status(workdir: str | Path) -> str:
    """``done`` | ``failed`` | ``started`` (a workdir without results) | ``pending``."""
    return Workdir(workdir).status()


def _tail(path: Path, chars: int = 4000) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - chars))
        return f.read().decode("utf-8", "replace")


class _Book:
    """The sweep's trial table, written to ``root/sweep.json`` after every change."""

    def __init__(self, study: Study, root: Path, trials: list[Trial]):
        self.path = root / "sweep.json"
        self.lock = threading.Lock()
        self.head = {"study": study.name, "study_file": str(study.path) if study.path else None,
                     "arg": study.arg, "base": study.base, "root": str(root)}
        self.rows = {t.name: {**t.to_json(), "status": trial_status(t.workdir), "ran": False}
                     for t in trials}
        self.write()

    def update(self, name: str, **fields) -> None:
        with self.lock:
            self.rows[name].update(fields)
            self.write()

    def write(self) -> None:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        data = {**self.head, "updated": time.time(), "counts": counts,
                "trials": list(self.rows.values())}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.path)

    def summary(self) -> dict:
        with self.lock:
            return json.loads(self.path.read_text())


class _Procs:
    """The child processes this sweep started, so an interrupt can stop exactly them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, cmd: list[str], out: Path, err: Path,
            timeout: float | None) -> tuple[int | None, bool]:
        """``(returncode, timed_out)``; returncode None: not started (the sweep is stopping)."""
        with open(out, "ab") as fo, open(err, "ab") as fe:
            with self.lock:
                if self.stopping:
                    return None, False
                proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
                self.live.add(proc)
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # SIGTERM lets the trainer save a checkpoint before it exits.
                timed_out = True
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            finally:
                with self.lock:
                    self.live.discard(proc)
        return proc.returncode, timed_out

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


def _finish(book: _Book, trial: Trial, rc: int | None, timed_out: bool, seconds: float,
            cmd: list[str], err_path: Path) -> str:
    wd = Workdir(trial.workdir)
    status = wd.status()
    if rc is None:  # never started: the sweep was interrupted first
        book.update(trial.name, status=status)
        return status
    if status != "done":
        # A member that diverged has recorded its own failure (with its step) already.
        if wd.read_failure() is None:
            tail = _tail(err_path)
            lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
            wd.record_failure(lines[-1] if lines else f"return code {rc}", returncode=rc,
                              timed_out=timed_out, command=cmd, stderr_tail=tail,
                              stderr_path=str(err_path))
        status = "failed"
        info = wd.read_failure() or {}
        book.update(trial.name, error=str(info.get("error", ""))[:300], log=str(err_path))
    book.update(trial.name, status=status, returncode=rc, seconds=round(seconds, 2), ran=True)
    return status


def _launch(cmd: list[str], trials: list[Trial], out: Path, err: Path, book: _Book,
            procs: _Procs, timeout: float | None, log: Callable[[str], None],
            what: str) -> None:
    for t in trials:
        Workdir(t.workdir).create().clear_failure()  # a retry starts without the old record
        book.update(t.name, status="running", vmapped=len(trials) > 1)
    log(f"[sweep] start  {what}")
    t0 = time.perf_counter()
    try:
        rc, timed_out = procs.run(cmd, out, err, timeout)
    except OSError as e:  # could not start the process at all: these fail, others go on
        with open(err, "a") as f:
            f.write(f"could not start {cmd}: {e}\n")
        rc, timed_out = -1, False
    for t in trials:
        status = _finish(book, t, rc, timed_out, time.perf_counter() - t0, cmd, err)
        log(f"[sweep] {status:6s} {t.name} ({time.perf_counter() - t0:.1f}s)")


def _run_one(trial: Trial, book: _Book, procs: _Procs, python: str, timeout: float | None,
             log: Callable[[str], None]) -> None:
    wd = Workdir(trial.workdir)
    _launch(trial.command(python), [trial], wd.stdout_path, wd.stderr_path, book, procs,
            timeout, log, trial.name)


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


def _run_group(group: list[Trial], book: _Book, procs: _Procs, python: str,
               timeout: float | None, log: Callable[[str], None]) -> None:
    # The group's process output goes to its first member's workdir; every member's
    # failure record points there.
    wd = Workdir(group[0].workdir)
    _launch(group_command(group, python), group, wd.stdout_path, wd.stderr_path, book, procs,
            timeout, log, f"vmapped group of {len(group)}: {group[0].name} ...")


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


def run_sweep(study: str | Path | Study, root: str | Path | None = None, *, workers: int = 1,
              smoke: bool = False, vmap_seeds: bool = False, timeout: float | None = None,
              python: str = sys.executable, log: Callable[[str], None] | None = None) -> dict:
    """Runs every trial of ``study`` that is not done; returns the ``sweep.json`` content.

    Args:
      study: ``experiments/x.py[:arg]`` or a loaded :class:`Study`.
      root: the sweep root (default ``runs/<study name>``).
      workers: trials (processes) run at once.
      smoke: run the study's ``smoke`` variant.
      vmap_seeds: run trials that differ only in seed (and lr) as one vmapped process.
      timeout: seconds per trial (or vmapped group) before it is stopped and marked failed.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not isinstance(study, Study):
        study = load_study(study, smoke=smoke)
    elif smoke:
        raise ValueError("smoke=True needs a study spec, not a loaded Study; load it with "
                         "load_study(spec, smoke=True)")
    root = Path(root) if root is not None else study.default_root()
    root.mkdir(parents=True, exist_ok=True)
    trials = expand(study, root)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    book = _Book(study, root, trials)
    todo = [t for t in trials if trial_status(t.workdir) != "done"]
    log(f"[sweep] {study.name}: {len(trials)} trials, {len(trials) - len(todo)} done, "
        f"{len(todo)} to run in {root} with {workers} worker(s)")
    procs = _Procs()
    jobs: list[Callable[[], Any]] = []
    if vmap_seeds:
        for group in vmap_groups(todo):
            if len(group) == 1:
                jobs.append(lambda t=group[0]: _run_one(t, book, procs, python, timeout, log))
            else:
                jobs.append(lambda g=group: _run_group(g, book, procs, python, timeout, log))
    else:
        jobs = [lambda t=t: _run_one(t, book, procs, python, timeout, log) for t in todo]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for f in [pool.submit(j) for j in jobs]:
            f.result()  # _run_one/_run_group record their own failures; this is a bug
    except KeyboardInterrupt:
        # Stop the children this sweep started (SIGTERM: the trainer checkpoints first).
        procs.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        for t in trials:
            if book.rows[t.name]["status"] == "running":
                book.update(t.name, status=trial_status(t.workdir))
        raise
    pool.shutdown(wait=True)
    return book.summary()
