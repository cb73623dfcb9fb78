"""Studies: a sweep definition, validated and expanded into trials.

A study is a Python file ``experiments/<study>.py`` with ``get_sweep(arg=None)``
returning a plain dict (the config style: the ``arg`` string selects variants,
e.g. ``:smoke`` or ``:quick``)::


    {
      "base": "configs/adding.py:T=100",      # the config every trial starts from
      # at most one of grid / random / trials / optuna (none: a single configuration)
      "grid": {"model.cell": ["lstm", "gru"], ":T": [100, 200]},   # Cartesian product
      "random": {"n": 8, "seed": 0,                                 # random search
                 "space": {"optim.lr": ("loguniform", 1e-4, 1e-2),
                           "model.hidden": ("choice", [32, 64])}},
      "trials": [{"model.cell": "gru"}, {"model.cell": "lstm", ":T": 50}],  # explicit list
      "optuna": {"n_trials": 20, "space": {...}, "metric": "eval.mse",   # a guided search
                 "direction": "minimize", "sampler": "tpe", "pruner": "median"},
      "fixed": {"train.steps": 500, ":T": 50},  # in every trial, kept out of trial names
      # evaluation-only axes: each trained run is evaluated once per combination
      "eval_grid": {"decode.beam_size": [1, 4], "decode.length_penalty": ["none", "gnmt"]},
      "eval_checkpoint": "latest",            # or "best": the weights those evaluations use
      "seeds": [0, 1, 2],                     # the seed axis (config key ``seed``)
      "metrics": {"eval.mse": "min", "train.grad_norm:max": "min"},  # what report shows
      "success": {"eval.mse": ("<=", 0.01)},  # report: fraction of seeds that reach it
      "plot": {"metric": "eval.mse", "panel": ":T", "logy": True},   # report's curves
      # (with an eval_grid also "eval_metric": a final metric or a list, plotted against
      # the first eval axis)
    }

Override keys are dotted config keys (``optim.lr``, ``seed``) or, with a leading
colon, config-variant arguments (``:T`` becomes ``configs/adding.py:T=...``).
Metric names are read by :mod:`rnnjax.sweeps.report`: ``eval.mse`` is the final value in
``results.json``; ``<split>.<key>:<agg>`` (agg ``max|min|mean|last|first``)
aggregates the rows of ``metrics.jsonl``.

Each trial runs in ``<root>/<name>`` where the name is readable and ends in a
hash of everything that defines the run (``cell=gru,T=200,seed=1-3fa2c1``), so a
changed study never reuses a workdir that belongs to another config.

``eval_grid`` holds axes that change only evaluation (the decoder's beam size and
length penalty: :data:`rnnjax.config_schema.EVAL_ONLY_KEYS`). They are not trial axes:
the trials are the training configurations x seeds, each trained once, and after its
training each trial's workdir is evaluated once per combination of the eval grid by
``rnnjax eval --checkpoint <eval_checkpoint> --config.KEY=V ... --record``, which
writes ``evals/<name>.json`` in the workdir. Adding an eval axis or value later reuses
the trained runs (the trial names do not cover the eval grid). A key that would change
training is refused with a message that says to make it a training axis.
``eval_checkpoint`` defaults to ``latest``: the weights of the last step, which
``results.json``'s own final evaluation describes, so a combination equal to the
trained config reproduces it; ``best`` is the checkpoint the task's metric picked
during training, with the trained config's decoder.
:mod:`rnnjax.sweeps.runner` runs the trials; :mod:`rnnjax.sweeps.report` reads them.

This module never imports models, cells or the trainer: a study is data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnjax.config_schema import check_eval_only
from rnnjax.configlib import import_file, resolve_config_path, split_spec

SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
METRIC_AGGS = ("max", "min", "mean", "last", "first")
SEED_KEY = "seed"
#: The sweep root's table of trials (one per root; the runner rewrites it as statuses change).
SWEEP_FILE = "sweep.json"
#: Keys a vmapped group may differ in (rnnjax.train.trainer.MEMBER_KEYS).
VMAP_KEYS = ("seed", "optim.lr")
_STUDY_KEYS = ("base", "grid", "random", "trials", "optuna", "fixed", "seeds", "metrics",
               "success", "plot", "description", "eval_grid", "eval_checkpoint")
EVAL_CHECKPOINTS = ("latest", "best")
OPTUNA_SAMPLERS = ("tpe", "random")
OPTUNA_PRUNERS = ("median", "asha", "threshold", "none")
_OPTUNA_KEYS = ("n_trials", "space", "metric", "direction", "sampler", "pruner",
                "pruner_kwargs", "storage", "seed")


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
    optuna: dict | None = None  # an Optuna search (rnnjax.sweeps.search): trials chosen as it runs
    eval_grid: dict[str, list] | None = None  # evaluation-only axes (see the module docstring)
    eval_checkpoint: str = "latest"

    @property
    def axes(self) -> list[str]:
        """The non-seed override keys, in the study's order."""
        if self.grid is not None:
            return list(self.grid)
        if self.random is not None:
            return list(self.random["space"])
        if self.optuna is not None:
            return list(self.optuna["space"])
        keys: list[str] = []
        for t in self.trials or []:
            keys.extend(k for k in t if k not in keys)
        return keys

    @property
    def eval_axes(self) -> list[str]:
        """The evaluation-only axes (``eval_grid``'s keys), in the study's order."""
        return list(self.eval_grid or {})

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
    candidates.append(resolve_config_path(p))  # a shipped config, from any install
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
    given = [k for k in ("grid", "random", "trials", "optuna") if desc.get(k) is not None]
    if len(given) > 1:
        raise ValueError(f"sweep {name}: give at most one of grid, random, trials, optuna; "
                         f"got {given}")
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
    optuna = desc.get("optuna")
    if optuna is not None:
        optuna = _check_optuna(name, optuna)
        if len(list(desc.get("seeds", [0]))) != 1:
            raise ValueError(f"sweep {name}: an optuna study trains one seed per trial; give "
                             f"one seed (repeat the best configurations over seeds in a grid)")
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
    for source in (grid or {}, (random or {}).get("space", {}),
                   (optuna or {}).get("space", {}), *(trials or []),
                   desc.get("fixed", {})):
        if SEED_KEY in source:
            raise ValueError(f"sweep {name}: set seeds with the 'seeds' field, not as an "
                             f"override")
    eval_grid = _check_eval_grid(name, desc.get("eval_grid"), grid, random, trials, optuna)
    eval_checkpoint = desc.get("eval_checkpoint", "latest")
    if eval_checkpoint not in EVAL_CHECKPOINTS:
        raise ValueError(f"sweep {name}: eval_checkpoint must be one of "
                         f"{list(EVAL_CHECKPOINTS)}, got {eval_checkpoint!r}")
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
                 description=str(desc.get("description", "")), optuna=optuna,
                 eval_grid=eval_grid, eval_checkpoint=eval_checkpoint)


def _check_eval_grid(name: str, eval_grid: Any, grid, random, trials, optuna
                     ) -> dict[str, list] | None:
    """The eval grid, validated: evaluation-only dotted keys, each with values, none of
    them also a training axis. (``fixed`` may set one: that is the trained config's
    value, used by the evaluations during training; the eval grid overrides it after.)"""
    if eval_grid is None:
        return None
    if not isinstance(eval_grid, Mapping) or not eval_grid:
        raise ValueError(f"sweep {name}: eval_grid must be a non-empty dict key -> list of "
                         f"values, e.g. {{'decode.beam_size': [1, 4]}}")
    if optuna is not None:
        raise ValueError(f"sweep {name}: an Optuna search optimises a training metric and "
                         f"takes no eval_grid; evaluate its best trials afterwards with a "
                         f"study that lists them ('trials') and has the eval_grid")
    out = {}
    for k, v in eval_grid.items():
        if not isinstance(k, str) or k.startswith(":") or k == SEED_KEY:
            raise ValueError(f"sweep {name}: eval_grid key {k!r} is not an evaluation "
                             f"setting: a config-variant argument (':...') or the seed "
                             f"defines a trained run; put it in 'grid' (or 'seeds')")
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not list(v):
            raise ValueError(f"sweep {name}: eval_grid axis {k!r} needs a non-empty list of "
                             f"values, got {v!r}")
        out[k] = list(v)
    check_eval_only(list(out), f"sweep {name}: eval_grid",
                    "Move such keys to 'grid' (a training axis: one trained run per value); "
                    "eval_grid is for settings that evaluate one trained run in several ways.")
    training = set(grid or {}) | set((random or {}).get("space", {}))
    for t in trials or []:
        training |= set(t)
    both = sorted(set(out) & training)
    if both:
        raise ValueError(f"sweep {name}: {both} are both training axes and eval_grid axes; "
                         f"keep each key in one of them")
    return out


def _check_optuna(name: str, spec: Any) -> dict:
    """An optuna block, validated, with its defaults filled in (no optuna import)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"sweep {name}: optuna must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_OPTUNA_KEYS))
    if unknown:
        raise ValueError(f"sweep {name}: optuna has unknown fields {unknown}; known: "
                         f"{list(_OPTUNA_KEYS)}")
    out = {"sampler": "tpe", "pruner": "median", "pruner_kwargs": {}, "storage": None,
           "seed": 0, "direction": "minimize", **spec}
    if not isinstance(out.get("n_trials"), int) or out["n_trials"] < 1:
        raise ValueError(f"sweep {name}: optuna needs n_trials >= 1, got "
                         f"{out.get('n_trials')!r}")
    space = out.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"sweep {name}: optuna needs a 'space' dict key -> distribution")
    for k, dist in space.items():
        _check_dist(name, k, dist)
    if "metric" not in out:
        raise ValueError(f"sweep {name}: optuna needs the 'metric' it optimises, e.g. eval.mse")
    if parse_metric(out["metric"])[2] is not None:
        raise ValueError(f"sweep {name}: optuna's metric is a logged value (<split>.<key>, "
                         f"e.g. eval.mse), not an aggregate; got {out['metric']!r}")
    if out["direction"] not in ("minimize", "maximize"):
        raise ValueError(f"sweep {name}: optuna direction must be 'minimize' or 'maximize', "
                         f"got {out['direction']!r}")
    for field, known in (("sampler", OPTUNA_SAMPLERS), ("pruner", OPTUNA_PRUNERS)):
        if out[field] not in known:
            raise ValueError(f"sweep {name}: unknown optuna {field} {out[field]!r}; known: "
                             f"{list(known)}")
    out["space"] = dict(space)
    out["pruner_kwargs"] = dict(out["pruner_kwargs"] or {})
    return out


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
    # The eval grid's combinations, each evaluated on this trial's trained workdir.
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval_checkpoint: str = "latest"

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

    @staticmethod
    def eval_args(evaluation: Mapping[str, Any]) -> list[str]:
        """An eval combination as ``["k=v", ...]`` (what ``rnnjax eval --config.k=v`` takes
        and what names its record, :meth:`rnnjax.train.workdir.Workdir.eval_name`)."""
        return [f"{k}={format_cli_value(v)}" for k, v in evaluation.items()]

    def eval_command(self, evaluation: Mapping[str, Any], python: str = sys.executable
                     ) -> list[str]:
        """The ``rnnjax eval --record`` that evaluates this trial's trained workdir with
        one combination of the eval grid."""
        return [python, "-m", "rnnjax", "eval", "--workdir", str(self.workdir),
                "--checkpoint", self.eval_checkpoint,
                *[f"--config.{a}" for a in self.eval_args(evaluation)], "--record"]


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


def evaluations(study: Study) -> list[dict[str, Any]]:
    """The eval grid's combinations (Cartesian product), in order; ``[]`` without one."""
    if not study.eval_grid:
        return []
    keys = list(study.eval_grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*study.eval_grid.values())]


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
    if study.optuna is not None:
        raise ValueError(f"sweep {study.name} is an Optuna search: its trials are chosen as it "
                         f"runs; read them with rnnjax.sweeps.search.search_trials(study, root)")
    trials, seen = [], {}
    for conf in configs:
        for seed in study.seeds:
            trial = make_trial(study, {**conf, SEED_KEY: seed}, names, root)
            if trial.name in seen:
                raise ValueError(f"sweep {study.name}: two trials have the same overrides "
                                 f"{trial.overrides}; remove the duplicate")
            seen[trial.name] = True
            trials.append(trial)
    return trials


def make_trial(study: Study, overrides: dict[str, Any], names: Mapping[str, str],
               root: Path, *, prefix: str = "", identity: Mapping[str, Any] | None = None
               ) -> Trial:
    """One trial of ``study`` with ``overrides`` (seed included), in ``root/<name>``.

    ``prefix`` starts the name (an Optuna trial's number); ``identity`` adds to what
    the name's hash covers.
    """
    every = {**study.fixed, **overrides}
    args = {k: v for k, v in every.items() if k.startswith(":")}
    config_overrides = {k: v for k, v in every.items() if not k.startswith(":")}
    # The hash covers what defines the run: base config, fixed values, overrides.
    ident = {"base": study.base, "fixed": study.fixed, "overrides": overrides,
             **(identity or {})}
    # The eval grid is not in it: evaluating a run in more ways reuses the trained run.
    name = prefix + trial_name(overrides, names, ident)
    return Trial(name=name, overrides=overrides,
                 spec=_spec_with_args(study.base, study.base_path, args),
                 config_overrides=config_overrides, workdir=Path(root) / name,
                 evaluations=evaluations(study), eval_checkpoint=study.eval_checkpoint)


