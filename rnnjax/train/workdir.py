"""The run directory: the one owner of its layout.

A run directory (workdir) tells the story of one run, so that it can be understood
without rerunning it::

    config.json      the resolved config (written once the run has really started)
    metrics.jsonl    one JSON row per logged step: {"step", "split", "time", ...}
    results.json     {"status": "done", "step", "best_step", "eval": {...}, ...}
    failed.json      {"time", "error", "traceback", ...}: why the last attempt failed
    evals/<name>.json  one record per evaluation with overrides (``rnnjax eval --record``,
                     a sweep's ``eval_grid``): {"status", "checkpoint", "overrides",
                     "eval", ...}, or {"status": "failed", "error", ...}
    checkpoints/     Orbax checkpoints: the last N and the best by the task's metric
    tb/              TensorBoard events
    plots/           PNG curves
    stdout.log, stderr.log   a sweep trial's process output

Every other module reads and writes these files through :class:`Workdir`; none of
them spells a file name. Results and failure records have one schema each,
written atomically (temp file + rename), so a reader never sees half a file.

This module never imports the training loop, a task or a model.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from rnnjax.config_schema import base_config
from rnnjax.train.checkpoint import Checkpointer, CheckpointError
from rnnjax.train.optim import averaged_params, make_optimizer
from rnnjax.train.state import create_train_state

#: The statuses :meth:`Workdir.status` reports.
STATUSES = ("done", "failed", "started", "pending")


def json_default(o):
    """``json.dumps`` fallback for numpy scalars and arrays."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _fill_defaults(recorded: dict, defaults: dict) -> dict:
    """``recorded`` with every key of ``defaults`` it lacks, recursively."""
    out = dict(recorded)
    for k, v in defaults.items():
        if k not in out:
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _fill_defaults(out[k], v)
    return out


def config_json(config) -> dict:
    """A config as plain JSON (what ``config.json`` holds)."""
    return json.loads(config.to_json_best_effort())


class WorkdirLocked(RuntimeError):
    """Another process is training in this workdir; the message names it."""


class Workdir:
    """One run directory. Cheap to create; touches the disk only when asked."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    FAILED = "failed.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tb"
    PLOTS = "plots"
    STDOUT = "stdout.log"
    STDERR = "stderr.log"
    DIAGNOSTICS = "diagnostics.json"
    EVALS = "evals"
    LOCK = ".lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # paths --------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def results_path(self) -> Path:
        return self.path / self.RESULTS

    @property
    def failed_path(self) -> Path:
        return self.path / self.FAILED

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    @property
    def evals_dir(self) -> Path:
        return self.path / self.EVALS

    @property
    def stdout_path(self) -> Path:
        return self.path / self.STDOUT

    @property
    def stderr_path(self) -> Path:
        return self.path / self.STDERR

    def create(self) -> Workdir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # the lock -----------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds an exclusive OS lock on ``.lock`` while training writes here.

        A second process on the same workdir is refused with a message naming the
        holder (its pid, host and start time, written into the file). The lock is
        ``flock``'s, so the OS releases it when its process dies however it dies: a
        killed run never blocks the next one.
        """
        try:
            self.create()
            f = open(self.path / self.LOCK, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise OSError(f"cannot write to the workdir {self.path} ({e.strerror}); training "
                          f"needs a writable run directory: use another --workdir") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "a process that wrote no details"
                raise WorkdirLocked(
                    f"workdir {self.path} is in use by another rnnjax run ({holder}). Wait for "
                    f"it to finish, or stop it (kill its pid) and run again.") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        finally:
            f.close()

    def is_finished(self, config) -> bool:
        """True when ``results.json`` says done at ``config.train.steps`` for this config:
        such a run only reports, and needs no write."""
        results = self.read_results()
        if not results or results.get("status") != "done":
            return False
        if int(results.get("step", -1)) != int(config.train.steps):
            return False
        try:
            self.check_config(config)
        except ValueError:
            return False
        return self._recorded_config() == config_json(config)

    # the config ---------------------------------------------------------------------
    def has_config(self) -> bool:
        return self.config_path.exists()

    def read_config(self) -> ml_collections.ConfigDict:
        """The run's config; a directory without one is not a run (CheckpointError)."""
        if not self.config_path.exists():
            raise CheckpointError(
                f"{self.path} has no {self.CONFIG}: it is not an rnnjax workdir (train one "
                f"with `rnnjax train --config ... --workdir {self.path}`)")
        return ml_collections.ConfigDict(self._recorded_config())

    def _recorded_config(self) -> dict:
        """``config.json`` with the schema's defaults for keys it lacks: a run recorded before
        a key was added to :func:`rnnjax.config_schema.base_config` (whose default keeps the
        old behaviour) still loads and resumes."""
        return _fill_defaults(json.loads(self.config_path.read_text()),
                              config_json(base_config()))

    def check_config(self, config) -> None:
        """A workdir belongs to one config; only ``train.steps`` may differ on resume."""
        if not self.config_path.exists():
            return
        old, new = self._recorded_config(), config_json(config)
        a, b = copy.deepcopy(old), copy.deepcopy(new)
        for d in (a, b):
            d.get("train", {}).pop("steps", None)
        if a != b:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"workdir {self.path} holds a run with a different config (sections {diff} "
                f"differ). Use a new --workdir, or delete {self.path} to start over.")

    def write_config(self, config) -> None:
        self.create()
        atomic_write_text(self.config_path,
                          json.dumps(config_json(config), indent=2, sort_keys=True))

    # results and failures -----------------------------------------------------------
    def read_results(self) -> dict | None:
        try:
            return json.loads(self.results_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_results(self, *, step: int, best_step: int | None, eval_metrics: dict,
                      **extra: Any) -> dict:
        """Writes ``results.json`` with status ``done``: the run reached ``step``."""
        results = {"status": "done", "step": int(step), "best_step": best_step,
                   "eval": dict(eval_metrics), **extra}
        self.create()
        atomic_write_text(self.results_path,
                          json.dumps(results, indent=2, default=json_default))
        return results

    def read_failure(self) -> dict | None:
        try:
            return json.loads(self.failed_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def record_failure(self, error: str, *, traceback: str | None = None,
                       **fields: Any) -> dict:
        """Writes ``failed.json``: ``{"time", "error", "traceback", **fields}``.

        ``error`` is one line saying what went wrong; ``fields`` add context (the
        failing step, a process's return code and stderr tail, ...).
        """
        info = {"time": time.time(), "error": error, "traceback": traceback, **fields}
        self.create()
        atomic_write_text(self.failed_path, json.dumps(info, indent=2, default=json_default))
        return info

    def clear_failure(self) -> None:
        self.failed_path.unlink(missing_ok=True)

    def status(self) -> str:
        """``done`` | ``failed`` | ``started`` (config but no result) | ``pending``."""
        results = self.read_results()
        if results is not None and results.get("status") == "done":
            return "done"
        if self.failed_path.exists():
            return "failed"
        if self.config_path.exists():
            return "started"
        return "pending"

    # evaluation records ---------------------------------------------------------------
    @staticmethod
    def eval_name(checkpoint: str, overrides: Sequence[str]) -> str:
        """The record name of an evaluation of ``checkpoint`` with ``overrides`` (``k=v``
        strings): readable, and ending in a hash of both, e.g.
        ``latest-decode.beam_size=4-5c0f1e2a``.

        The name is a function of the strings as given (spaces around ``=`` and the order
        of the keys aside): a sweep, which never loads a config, finds the record of each
        evaluation it ran by naming it again. ``=4`` and ``=4.0`` name two records.
        """
        pairs: dict[str, str] = {}
        for item in overrides:
            key, eq, value = str(item).partition("=")
            if not eq:
                raise ValueError(f"override {item!r} must look like key=value, e.g. "
                                 f"decode.beam_size=4")
            pairs[key.strip()] = value.strip()
        pairs = dict(sorted(pairs.items()))
        digest = hashlib.sha1(json.dumps({"checkpoint": checkpoint, "overrides": pairs},
                                         sort_keys=True).encode()).hexdigest()[:8]
        # Quotes (a string that would parse as another literal: 'none') are left out of
        # the readable part; the hash keeps them apart.
        readable = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(
            f"{k}={v.strip(chr(39) + chr(34))}" for k, v in pairs.items()))[:120]
        return "-".join(p for p in (checkpoint, readable, digest) if p)

    def eval_path(self, name: str) -> Path:
        return self.evals_dir / f"{name}.json"

    def read_eval(self, name: str) -> dict | None:
        try:
            return json.loads(self.eval_path(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_eval(self, name: str, *, checkpoint: str, checkpoint_step: int,
                   overrides: dict, eval_metrics: dict, **extra: Any) -> dict:
        """Writes the record ``evals/<name>.json`` with status ``done``.

        ``trained_step`` is the step ``results.json`` stood at (None: not finished), so a
        record of a run trained further since is seen as out of date (:meth:`eval_status`).
        """
        record = {"status": "done", "time": time.time(), "checkpoint": checkpoint,
                  "checkpoint_step": int(checkpoint_step), "trained_step": self._trained_step(),
                  "overrides": dict(overrides), "eval": dict(eval_metrics), **extra}
        self.evals_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.eval_path(name),
                          json.dumps(record, indent=2, default=json_default))
        return record

    def record_eval_failure(self, name: str, error: str, *, traceback: str | None = None,
                            **fields: Any) -> dict:
        """Writes the record ``evals/<name>.json`` with status ``failed``: ``error`` is one
        line, ``fields`` add context (a return code, the stderr tail)."""
        info = {"status": "failed", "time": time.time(), "error": error,
                "traceback": traceback, "trained_step": self._trained_step(), **fields}
        self.evals_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.eval_path(name), json.dumps(info, indent=2, default=json_default))
        return info

    def eval_status(self, name: str) -> str:
        """``done`` | ``failed`` | ``pending`` (no record, or one made before the run was
        trained to the step ``results.json`` now reports)."""
        record = self.read_eval(name)
        if record is None or record.get("trained_step") != self._trained_step():
            return "pending"
        return "done" if record.get("status") == "done" else "failed"

    def _trained_step(self) -> int | None:
        results = self.read_results()
        if results is None or results.get("status") != "done":
            return None
        return int(results["step"])

    # metrics ------------------------------------------------------------------------
    def truncate_metrics(self, after_step: int) -> None:
        """Drops the rows of ``metrics.jsonl`` past ``after_step`` (and a torn last line).

        A resumed run logs again every step after its checkpoint; without this, the
        rows between the checkpoint and a kill would appear twice.
        """
        path = self.metrics_path
        if not path.exists():
            return
        keep, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(row.get("step", 0)) > after_step:
                dropped += 1
            else:
                keep.append(line)
        if dropped:
            atomic_write_text(path, "".join(f"{line}\n" for line in keep))

    def latest_checkpoint_step(self) -> int | None:
        """The newest checkpoint's step, read from the directory names (no Orbax, no
        locks: cheap enough for a sweep to ask of every trial)."""
        if not self.checkpoint_dir.is_dir():
            return None
        steps = [int(p.name) for p in self.checkpoint_dir.iterdir()
                 if p.is_dir() and p.name.isdigit()]
        return max(steps) if steps else None

    # checkpoints --------------------------------------------------------------------
    def checkpointer(self, task, keep: int) -> Checkpointer:
        """The run's checkpointer: the last ``keep`` plus the best by the task's metric."""
        return Checkpointer(self.checkpoint_dir, keep=keep,
                            best_metric=f"eval/{task.best_metric}", best_mode=task.best_mode)

    def restore_params(self, task, config, model, params, which: str = "best"):
        """``(params, step)`` of the ``best`` (or ``latest``) checkpoint, restored into the
        structure of ``params`` (``model``'s): the weights the trainer evaluated. The whole
        train state is restored (the optimiser and task state built to match), so for
        NT-ASGD these are the average of the iterates that the checkpoint's optimiser
        state holds (:func:`rnnjax.train.optim.averaged_params`); for any other optimiser,
        the params as saved. The SGD iterate itself is the checkpoint's ``params``."""
        _, opt_tx = make_optimizer(config.optim, int(config.train.steps))
        target = create_train_state(params, opt_tx, task.init_task_state(
            model, config.train.batch_size))
        ckpt = self.checkpointer(task, config.train.keep_checkpoints)
        try:
            step = ckpt.best_step() if which == "best" else None
            if step is None:
                step = ckpt.latest_step()
            state, meta = ckpt.restore(target, step)
        finally:
            ckpt.close()
        return averaged_params(state.opt_state, state.params), int(meta["step"])
