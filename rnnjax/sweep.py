"""Sweeps: expand a study into trials and run each trial in its own workdir, resumably.

A study is a Python file ``experiments/<study>.py`` with ``get_sweep(arg=None)``
returning a plain dict (the config style: the ``arg`` string selects variants,
e.g. ``:smoke`` or ``:quick``)::

    {
      "base": "configs/adding.py:T=100",      # the config every trial starts from
      # at most one of grid / random / trials (none: a single configuration)
      "grid": {"model.cell": ["lstm", "gru"], ":T": [100, 200]},   # Cartesian product
      "random": {"n": 8, "seed": 0,                                 # random search
                 "space": {"optim.lr": ("loguniform", 1e-4, 1e-2),
                           "model.hidden": ("choice", [32, 64])}},
      "trials": [{"model.cell": "gru"}, {"model.cell": "lstm", ":T": 50}],  # explicit list
      "fixed": {"train.steps": 500, ":T": 50},  # in every trial, kept out of trial names
      "seeds": [0, 1, 2],                     # the seed axis (config key ``seed``)
      "metrics": {"eval.mse": "min", "train.grad_norm:max": "min"},  # what report shows
      "success": {"eval.mse": ("<=", 0.01)},  # report: fraction of seeds that reach it
      "plot": {"metric": "eval.mse", "panel": ":T", "logy": True},   # report's curves
    }

Override keys are dotted config keys (``optim.lr``, ``seed``) or, with a leading
colon, config-variant arguments (``:T`` becomes ``configs/adding.py:T=...``).
Metric names are read by :mod:`rnnjax.report`: ``eval.mse`` is the final value in
``results.json``; ``<split>.<key>:<agg>`` (agg ``max|min|mean|last|first``)
aggregates the rows of ``metrics.jsonl``.

Each trial runs in ``<root>/<name>`` where the name is readable and ends in a
hash of everything that defines the run (``cell=gru,T=200,seed=1-3fa2c1``), so a
changed study never reuses a workdir that belongs to another config. Trials run
as separate processes (``python -m rnnjax train ...``), ``workers`` at a time.
A done trial (``results.json`` with ``status: done``) is skipped; an interrupted
one is started again and the trainer resumes it from its checkpoints; a failing
one gets ``failed.json`` (return code and the tail of its stderr) and the others
go on. ``<root>/sweep.json`` lists every trial and its status.

With ``vmap_seeds=True`` the trials that differ only in ``seed`` (and
``optim.lr``) run together in one process, vmapped over the members
(:mod:`rnnjax.train.vmap`): faster for small models, but they checkpoint only
at the end, so an interrupted group restarts from step 0 (a trial that a normal
run left half done resumes on its own instead).

This module never imports models or cells: trials are processes, results files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rnnjax.configlib import import_file, split_spec

SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
METRIC_AGGS = ("max", "min", "mean", "last", "first")
SEED_KEY = "seed"
#: Keys a vmapped group may differ in (see rnnjax.train.vmap).
VMAP_KEYS = ("seed", "optim.lr")
_STUDY_KEYS = ("base", "grid", "random", "trials", "fixed", "seeds", "metrics", "success",
               "plot", "description")


# ---------------------------------------------------------------------------
# Loading and validating a study.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Study:
    """A loaded, validated sweep description. ``name`` includes the variant (``x_quick``)."""

    name: str
    path: Path | None
    arg: str | None
    base: str
    base_path: Path
    grid: dict[str, list] | None
    random: dict | None
    trials: list[dict] | None
    fixed: dict[str, Any]
    seeds: list[int]
    metrics: dict[str, str]
    success: dict[str, tuple[str, float]]
    plot: dict[str, Any]
    description: str = ""

    @property
    def axes(self) -> list[str]:
        """The non-seed override keys, in the study's order."""
        if self.grid is not None:
            return list(self.grid)
        if self.random is not None:
            return list(self.random["space"])
        keys: list[str] = []
        for t in self.trials or []:
            keys.extend(k for k in t if k not in keys)
        return keys

    def default_root(self) -> Path:
        return Path("runs") / self.name


def _merge_arg(arg: str | None, extra: str) -> str:
    parts = [p for p in (arg or "").split(",") if p]
    if extra not in parts:
        parts.append(extra)
    return ",".join(parts)


def load_study(spec: str | Path, *, smoke: bool = False) -> Study:
    """Imports ``experiments/x.py[:arg]``, calls ``get_sweep(arg)`` and validates it.

    ``smoke=True`` adds ``smoke`` to the arg (the study's CI-sized variant).
    """
    path, arg = split_spec(spec)
    if smoke:
        arg = _merge_arg(arg, "smoke")
    if not path.is_file():
        raise FileNotFoundError(f"study file {str(path)!r} not found; studies live in "
                                f"experiments/*.py (e.g. experiments/vanishing_gradients.py)")
    module = import_file(path, "study")
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"study file {path} defines no get_sweep(arg=None)")
    desc = module.get_sweep(arg) if arg is not None else module.get_sweep()
    name = path.stem + (("_" + re.sub(r"[^A-Za-z0-9=.-]+", "_", arg)) if arg else "")
    return study_from_dict(desc, name=name, path=path, arg=arg)


def _resolve_base(base: str, study_path: Path | None) -> Path:
    """A relative config path is looked up from the cwd, then from the study's repo root."""
    p = Path(base.partition(":")[0])
    candidates = [p]
    if not p.is_absolute() and study_path is not None:
        here = study_path.resolve().parent
        candidates += [here.parent / p, here / p]
    candidates.append(Path(__file__).resolve().parent.parent / p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"the study's base config {str(p)!r} was not found (looked in "
                            f"{[str(c) for c in candidates]})")


def study_from_dict(desc: Mapping, *, name: str, path: Path | None = None,
                    arg: str | None = None) -> Study:
    """Validates a sweep description (see the module docstring); raises ValueError."""
    if not isinstance(desc, Mapping):
        raise ValueError(f"get_sweep must return a dict, got {type(desc).__name__}")
    unknown = sorted(set(desc) - set(_STUDY_KEYS))
    if unknown:
        raise ValueError(f"sweep {name}: unknown fields {unknown}; known: {list(_STUDY_KEYS)}")
    if "base" not in desc:
        raise ValueError(f"sweep {name}: 'base' (a config spec like configs/adding.py:T=100) "
                         f"is required")
    given = [k for k in ("grid", "random", "trials") if desc.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"sweep {name}: give at most one of grid, random, trials; got {given}")
    grid = desc.get("grid")
    if grid is not None:
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"sweep {name}: grid must be a non-empty dict key -> list of values")
        grid = {k: list(v) for k, v in grid.items()}
        for k, v in grid.items():
            if not v:
                raise ValueError(f"sweep {name}: grid axis {k!r} has no values")
    random = desc.get("random")
    if random is not None:
        random = dict(random)
        if not isinstance(random.get("n"), int) or random["n"] < 1:
            raise ValueError(f"sweep {name}: random needs n >= 1 trials, got {random.get('n')!r}")
        space = random.get("space")
        if not isinstance(space, Mapping) or not space:
            raise ValueError(f"sweep {name}: random needs a 'space' dict key -> distribution")
        for k, dist in space.items():
            _check_dist(name, k, dist)
        random = {"n": random["n"], "seed": int(random.get("seed", 0)), "space": dict(space)}
    trials = desc.get("trials")
    if trials is not None:
        if not trials or not all(isinstance(t, Mapping) for t in trials):
            raise ValueError(f"sweep {name}: trials must be a non-empty list of override dicts")
        trials = [dict(t) for t in trials]
    seeds = list(desc.get("seeds", [0]))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"sweep {name}: seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep {name}: seeds has repeats: {seeds}")
    for source in (grid or {}, (random or {}).get("space", {}), *(trials or []),
                   desc.get("fixed", {})):
        if SEED_KEY in source:
            raise ValueError(f"sweep {name}: set seeds with the 'seeds' field, not as an "
                             f"override")
    metrics = dict(desc.get("metrics", {}))
    for m, better in metrics.items():
        parse_metric(m)
        if better not in ("min", "max"):
            raise ValueError(f"sweep {name}: metric {m!r} needs better = 'min' or 'max', "
                             f"got {better!r}")
    success = {}
    for m, cond in dict(desc.get("success", {})).items():
        parse_metric(m)
        if (not isinstance(cond, (tuple, list)) or len(cond) != 2
                or cond[0] not in ("<=", ">=", "<", ">")):
            raise ValueError(f"sweep {name}: success[{m!r}] must be (op, threshold) with op "
                             f"one of <=, >=, <, >; got {cond!r}")
        success[m] = (cond[0], float(cond[1]))
    base = str(desc["base"])
    return Study(name=name, path=path, arg=arg, base=base,
                 base_path=_resolve_base(base, path), grid=grid, random=random, trials=trials,
                 fixed=dict(desc.get("fixed", {})), seeds=seeds, metrics=metrics,
                 success=success, plot=dict(desc.get("plot", {})),
                 description=str(desc.get("description", "")))


def _check_dist(name, key, dist):
    if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in SPACE_KINDS:
        raise ValueError(f"sweep {name}: random space[{key!r}] must be ('loguniform', lo, hi), "
                         f"('uniform', lo, hi), ('int', lo, hi) or ('choice', [values]); "
                         f"got {dist!r}")
    kind = dist[0]
    if kind == "choice":
        if len(dist) != 2 or not list(dist[1]):
            raise ValueError(f"sweep {name}: space[{key!r}] = ('choice', [values]) needs values")
        return
    if len(dist) != 3 or not dist[1] < dist[2]:
        raise ValueError(f"sweep {name}: space[{key!r}] = ({kind!r}, lo, hi) needs lo < hi, "
                         f"got {dist!r}")
    if kind == "loguniform" and dist[1] <= 0:
        raise ValueError(f"sweep {name}: space[{key!r}] loguniform needs lo > 0, got {dist[1]}")


def parse_metric(metric: str) -> tuple[str, str, str | None]:
    """``"eval.mse"`` -> ``("eval", "mse", None)``; ``"train.grad_norm:max"`` -> agg ``max``."""
    body, sep, agg = metric.partition(":")
    split, dot, key = body.partition(".")
    if not dot or not key or not split:
        raise ValueError(f"metric {metric!r} must look like <split>.<key>[:agg], e.g. eval.mse "
                         f"or train.grad_norm:max")
    if sep and agg not in METRIC_AGGS:
        raise ValueError(f"metric {metric!r}: unknown aggregation {agg!r}; known: "
                         f"{list(METRIC_AGGS)}")
    return split, key, (agg if sep else None)


# ---------------------------------------------------------------------------
# Expansion into trials.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Trial:
    """One run: its readable name, its overrides (seed last) and how to launch it."""

    name: str
    overrides: dict[str, Any]  # study overrides incl. seed, in axis order (no 'fixed')
    spec: str  # config spec with the variant args merged, e.g. /abs/configs/adding.py:T=200
    config_overrides: dict[str, Any]  # dotted keys: fixed + study overrides + seed
    workdir: Path

    @property
    def seed(self) -> int:
        return int(self.overrides[SEED_KEY])

    @property
    def group(self) -> dict[str, Any]:
        """The overrides that define the configuration (all but the seed)."""
        return {k: v for k, v in self.overrides.items() if k != SEED_KEY}

    def cli_overrides(self) -> list[str]:
        """``["k=v", ...]`` as ``load_config(spec, overrides)`` and the CLI read them."""
        return [f"{k}={format_cli_value(v)}" for k, v in self.config_overrides.items()]

    def command(self, python: str = sys.executable) -> list[str]:
        cmd = [python, "-m", "rnnjax", "train", "--config", self.spec]
        cmd += [f"--config.{o}" for o in self.cli_overrides()]
        return cmd + ["--workdir", str(self.workdir), "--no-progress"]

    def to_json(self) -> dict:
        return {"name": self.name, "overrides": self.overrides, "spec": self.spec,
                "config_overrides": self.config_overrides, "workdir": str(self.workdir)}


def format_cli_value(v: Any) -> str:
    """A value as ``apply_overrides`` parses it back (strings raw, the rest as literals).

    A string that would parse as another literal (``"none"`` -> None, ``"1e-3"`` ->
    a float) is quoted, so it stays the string the study wrote.
    """
    if isinstance(v, str):
        from rnnjax.configlib import _literal

        return v if _literal(v) == v else repr(v)
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    return repr(v)


def _short(key: str) -> str:
    return key.lstrip(":").rsplit(".", 1)[-1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Readable names for override keys: the last component, unless two keys share it."""
    leaves = [_short(k) for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k.lstrip(":"))
            for k, leaf in zip(keys, leaves)}


def format_value(v: Any) -> str:
    """A value for a trial name or a table cell: short, and safe in a file name."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    if isinstance(v, (list, tuple)):
        return "x".join(format_value(x) for x in v) or "none"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(v))


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def trial_name(overrides: Mapping[str, Any], names: Mapping[str, str], identity: Any) -> str:
    """``cell=gru,T=200,seed=1-3fa2c1``: the readable overrides and a hash of ``identity``."""
    readable = ",".join(f"{names.get(k, _short(k))}={format_value(v)}"
                        for k, v in overrides.items())
    if len(readable) > 120:  # file names have limits; the hash keeps it unique
        readable = readable[:120]
    return f"{readable}-{_digest(identity)}" if readable else _digest(identity)


def _sample(dist, rng: np.random.Generator):
    kind = dist[0]
    if kind == "choice":
        values = list(dist[1])
        return values[int(rng.integers(len(values)))]
    lo, hi = dist[1], dist[2]
    if kind == "int":
        return int(rng.integers(int(lo), int(hi) + 1))
    # 3 significant digits: the names stay readable and the name is the value.
    v = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "loguniform" \
        else rng.uniform(lo, hi)
    return float(f"{v:.3g}")


def configurations(study: Study) -> list[dict[str, Any]]:
    """The study's non-seed override dicts, in order (grid, random draws or the list)."""
    if study.grid is not None:
        keys = list(study.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*study.grid.values())]
    if study.random is not None:
        rng = np.random.default_rng(study.random["seed"])
        return [{k: _sample(d, rng) for k, d in study.random["space"].items()}
                for _ in range(study.random["n"])]
    if study.trials is not None:
        return [dict(t) for t in study.trials]
    return [{}]


def _spec_with_args(base: str, base_path: Path, args: Mapping[str, Any]) -> str:
    """``configs/x.py:a=1`` + ``{":b": 2}`` -> ``/abs/configs/x.py:a=1,b=2`` (later wins)."""
    _, sep, arg = base.partition(":")
    merged: dict[str, str] = {}
    for part in filter(None, (arg if sep else "").split(",")):
        k, eq, v = part.partition("=")
        merged[k.strip()] = v if eq else None
    for k, v in args.items():
        # parse_arg converts by the default's type: strings go in raw.
        merged[k.lstrip(":")] = v if isinstance(v, str) else format_cli_value(v)
    text = ",".join(k if v is None else f"{k}={v}" for k, v in merged.items())
    return f"{base_path}:{text}" if text else str(base_path)


def expand(study: Study, root: str | Path | None = None) -> list[Trial]:
    """All trials: configurations x seeds, each with its workdir under ``root``."""
    root = Path(root) if root is not None else study.default_root()
    configs = configurations(study)
    all_keys: list[str] = []
    for c in configs:
        all_keys.extend(k for k in c if k not in all_keys)
    names = short_names([*all_keys, SEED_KEY])
    trials, seen = [], {}
    for conf in configs:
        for seed in study.seeds:
            overrides = {**conf, SEED_KEY: seed}
            every = {**study.fixed, **overrides}
            args = {k: v for k, v in every.items() if k.startswith(":")}
            config_overrides = {k: v for k, v in every.items() if not k.startswith(":")}
            # The hash covers what defines the run: base config, fixed values, overrides.
            identity = {"base": study.base, "fixed": study.fixed, "overrides": overrides}
            name = trial_name(overrides, names, identity)
            if name in seen:
                raise ValueError(f"sweep {study.name}: two trials have the same overrides "
                                 f"{overrides}; remove the duplicate")
            seen[name] = True
            trials.append(Trial(name=name, overrides=overrides,
                                spec=_spec_with_args(study.base, study.base_path, args),
                                config_overrides=config_overrides, workdir=root / name))
    return trials


# ---------------------------------------------------------------------------
# Status of a trial directory.
# ---------------------------------------------------------------------------
def trial_status(workdir: str | Path) -> str:
    """``done`` | ``failed`` | ``started`` (a workdir without results) | ``pending``."""
    workdir = Path(workdir)
    results = workdir / "results.json"
    if results.exists():
        try:
            if json.loads(results.read_text()).get("status") == "done":
                return "done"
        except json.JSONDecodeError:
            pass
    if (workdir / "failed.json").exists():
        return "failed"
    if (workdir / "config.json").exists():
        return "started"
    return "pending"


def _tail(path: Path, chars: int = 4000) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - chars))
        return f.read().decode("utf-8", "replace")


def record_failure(workdir: Path, info: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "failed.json").write_text(json.dumps({"time": time.time(), **info}, indent=2,
                                                    default=str))


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------
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
    status = trial_status(trial.workdir)
    if rc is None:  # never started: the sweep was interrupted first
        book.update(trial.name, status=status)
        return status
    if status != "done":
        # A vmapped member that diverged has written its own failed.json already.
        if not (trial.workdir / "failed.json").exists():
            record_failure(trial.workdir, {
                "returncode": rc, "timed_out": timed_out, "command": cmd,
                "stderr_tail": _tail(err_path)})
        status = "failed"
    book.update(trial.name, status=status, returncode=rc, seconds=round(seconds, 2), ran=True)
    return status


def _clear_failure(workdir: Path) -> None:
    """A retried trial starts without the last attempt's failed.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "failed.json").unlink(missing_ok=True)


def _run_one(trial: Trial, book: _Book, procs: _Procs, python: str, timeout: float | None,
             log: Callable[[str], None]) -> str:
    _clear_failure(trial.workdir)
    cmd = trial.command(python)
    book.update(trial.name, status="running")
    log(f"[sweep] start  {trial.name}")
    t0 = time.perf_counter()
    err = trial.workdir / "stderr.log"
    try:
        rc, timed_out = procs.run(cmd, trial.workdir / "stdout.log", err, timeout)
    except OSError as e:  # could not start the process at all: this trial fails, others go on
        with open(err, "a") as f:
            f.write(f"could not start {cmd}: {e}\n")
        rc, timed_out = -1, False
    status = _finish(book, trial, rc, timed_out, time.perf_counter() - t0, cmd, err)
    log(f"[sweep] {status:6s} {trial.name} ({time.perf_counter() - t0:.1f}s)")
    return status


def _run_group(group: list[Trial], root: Path, book: _Book, procs: _Procs, python: str,
               timeout: float | None, log: Callable[[str], None]) -> None:
    gdir = root / "_vmap"
    gdir.mkdir(parents=True, exist_ok=True)
    gname = "+".join(t.name.rsplit("-", 1)[-1] for t in group)[:100]
    spec_path = gdir / f"{gname}.json"
    spec_path.write_text(json.dumps({"members": [
        {"spec": t.spec, "overrides": t.cli_overrides(), "workdir": str(t.workdir)}
        for t in group]}, indent=2, default=str))
    cmd = [python, "-m", "rnnjax.train.vmap", str(spec_path)]
    for t in group:
        _clear_failure(t.workdir)
        book.update(t.name, status="running", vmapped=True)
    log(f"[sweep] start  vmapped group of {len(group)}: {group[0].name} ...")
    t0 = time.perf_counter()
    err = gdir / f"{gname}.stderr.log"
    try:
        rc, timed_out = procs.run(cmd, gdir / f"{gname}.stdout.log", err, timeout)
    except OSError as e:
        with open(err, "a") as f:
            f.write(f"could not start {cmd}: {e}\n")
        rc, timed_out = -1, False
    for t in group:
        status = _finish(book, t, rc, timed_out, time.perf_counter() - t0, cmd, err)
        log(f"[sweep] {status:6s} {t.name} (vmapped, {time.perf_counter() - t0:.1f}s)")


def vmap_groups(trials: Sequence[Trial]) -> list[list[Trial]]:
    """Trials that differ only in ``seed``/``optim.lr`` (and share a config spec), grouped."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        key = json.dumps({"spec": t.spec, "o": {k: v for k, v in t.config_overrides.items()
                                                 if k not in VMAP_KEYS}},
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
        # A started trial has checkpoints: it resumes alone instead of restarting vmapped.
        started = [t for t in todo if trial_status(t.workdir) == "started"]
        jobs += [lambda t=t: _run_one(t, book, procs, python, timeout, log) for t in started]
        for group in vmap_groups([t for t in todo if t not in started]):
            if len(group) == 1:  # a lone trial keeps checkpoints and resumability
                jobs.append(lambda t=group[0]: _run_one(t, book, procs, python, timeout, log))
            else:
                jobs.append(lambda g=group: _run_group(g, root, book, procs, python, timeout,
                                                       log))
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
