"""Guided search with Optuna: a study kind whose trials are chosen as it runs.

::

    "optuna": {"n_trials": 40, "sampler": "tpe",           # tpe | random
               "pruner": "median",                          # median | asha | threshold | none
               "pruner_kwargs": {"n_startup_trials": 5},    # the pruner's own arguments
               "space": {"optim.lr": ("loguniform", 1e-4, 1e-2),   # random search's syntax
                         "model.hidden": ("choice", [32, 64])},
               "metric": "eval.mse", "direction": "minimize",
               "storage": None,  # default sqlite:///<root>/optuna.db; any SQLAlchemy URL
               "seed": 0}        # the sampler's seed

The runner asks the sampler for a trial when a slot frees (``workers`` in flight), so
later trials learn from earlier ones. Each trial is an ``rnnjax train`` process in its
own hashed workdir (``t003,lr=0.00123,hidden=32,seed=0-9f2c1a``), run by any executor.

Pruning happens where the trial runs: its job's monitor (:class:`OptunaPruning`) reads
the new ``<split>`` rows of the trial's ``metrics.jsonl`` every second, reports the
metric to the Optuna trial at its step, and on ``should_prune()`` (never at the trial's
last step, where stopping saves nothing) the job SIGTERMs the process; the trainer saves
a checkpoint and exits, and the trial is told PRUNED. A stop that lands after the
trainer wrote its results kills a finished run: its workdir says done, and the trial is
told COMPLETE with its metric.
Because the monitor talks to the storage, not to the driver, this works on Ray and
SLURM too: the storage must then be a database every worker reaches (SQLite on a
shared file system for a few workers; PostgreSQL/MySQL for many).

Resuming: the storage is the search's memory. A re-run loads it, re-runs the trials
it left RUNNING (their trainers resume from checkpoints, and report again only
steps the storage lacks) and asks for new ones until ``n_trials`` exist. Completed,
pruned and failed trials are not run again.

This module never imports models or the trainer; optuna is imported only here, and
only when a search runs or is reported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rnnjax.sweeps.executors import Job, Outcome, require
from rnnjax.sweeps.study import (
    SEED_KEY,
    Study,
    Trial,
    _sample,
    make_trial,
    parse_metric,
    short_names,
)
from rnnjax.train.metrics import read_metrics
from rnnjax.train.workdir import Workdir

_STUDIES: dict[tuple[str, str, str], Any] = {}
_STUDIES_LOCK = threading.Lock()


def storage_url(study: Study, root: str | Path) -> str:
    return study.optuna.get("storage") or f"sqlite:///{Path(root).resolve() / 'optuna.db'}"


def _optuna():
    optuna = require("optuna", "an optuna study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _load(url: str, name: str, spec: dict):
    """One Optuna study object per storage, name and pruner in this process (its threads
    share the storage's connection pool: SQLite wants few writers). The pruner is not
    in the storage: ``should_prune`` asks the one given here."""
    key = (url, name, json.dumps([spec["pruner"], spec["pruner_kwargs"]], sort_keys=True))
    with _STUDIES_LOCK:
        if key not in _STUDIES:
            optuna = _optuna()
            _STUDIES[key] = optuna.load_study(study_name=name, storage=url,
                                              pruner=_pruner(optuna, spec))
        return _STUDIES[key]


def _sampler(optuna, spec: dict):
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=spec["seed"]),
            "random": lambda: optuna.samplers.RandomSampler(seed=spec["seed"])}[spec["sampler"]]()


def _pruner(optuna, spec: dict):
    kw = spec["pruner_kwargs"]
    return {"median": lambda: optuna.pruners.MedianPruner(**kw),
            "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(**kw),
            "threshold": lambda: optuna.pruners.ThresholdPruner(**kw),
            "none": lambda: optuna.pruners.NopPruner()}[spec["pruner"]]()


def _suggest(trial, space: dict) -> dict[str, Any]:
    out = {}
    for key, dist in space.items():
        kind = dist[0]
        if kind == "choice":
            out[key] = trial.suggest_categorical(key, list(dist[1]))
        elif kind == "int":
            out[key] = trial.suggest_int(key, int(dist[1]), int(dist[2]))
        else:
            out[key] = trial.suggest_float(key, float(dist[1]), float(dist[2]),
                                           log=kind == "loguniform")
    return out


def _names(study: Study) -> dict[str, str]:
    return short_names([*study.optuna["space"], SEED_KEY])


def _trial(study: Study, root: Path, number: int, overrides: dict) -> Trial:
    return make_trial(study, overrides, _names(study), root, prefix=f"t{number:03d},",
                      identity={"optuna_trial": number})


def preview(study: Study, root: str | Path, n: int | None = None) -> list[Trial]:
    """``n`` (default ``n_trials``) trials drawn at random from the space, named as the
    search names its trials: for checking that every config they make loads. Needs
    no optuna."""
    rng = np.random.default_rng(study.optuna["seed"])
    n = study.optuna["n_trials"] if n is None else n
    return [_trial(study, Path(root), i, {**{k: _sample(d, rng) for k, d in
                                              study.optuna["space"].items()},
                                          SEED_KEY: study.seeds[0]})
            for i in range(n)]


def search_trials(study: Study, root: str | Path) -> list[tuple[Trial, Any]]:
    """``(Trial, FrozenTrial)`` for every trial the search's storage holds, in order."""
    optuna = _optuna()
    url = storage_url(study, root)
    try:
        frozen = optuna.load_study(study_name=study.name, storage=url).trials
    except KeyError:  # no such study in the storage: nothing ran yet
        return []
    return [(_trial(study, Path(root), t.number, t.user_attrs["overrides"]), t)
            for t in frozen if "overrides" in t.user_attrs]


@dataclasses.dataclass
class OptunaPruning:
    """A job monitor: reports a trial's logged metric to Optuna, asks whether to prune.

    Picklable (strings and numbers): it runs where the job runs and reaches the
    storage itself.
    """

    storage: str
    study_name: str
    trial_id: int
    metrics_path: str
    split: str
    key: str
    pruner: dict  # {"pruner": name, "pruner_kwargs": {...}}

    def __getstate__(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _final_step(self) -> int | None:
        """The trial's last step (``train.steps`` of the config its trainer wrote)."""
        if getattr(self, "_final", None) is None:
            try:
                cfg = json.loads((Path(self.metrics_path).parent / "config.json").read_text())
                self._final = int(cfg["train"]["steps"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return self._final

    def should_stop(self) -> bool:
        """Reports the new rows; True where the pruner says stop. Never at the trial's last
        step: stopping then saves nothing, and the SIGTERM would land while the trainer
        writes its results, throwing away a finished trial."""
        optuna = _optuna()
        if not hasattr(self, "_trial"):
            study = _load(self.storage, self.study_name, self.pruner)
            self._trial = optuna.trial.Trial(study, self.trial_id)
            # A resumed trial has reported some steps already: report only new ones.
            frozen = study._storage.get_trial(self.trial_id)
            self._reported = set(frozen.intermediate_values)
            self._offset = 0
        new = False
        path = Path(self.metrics_path)
        if path.exists():
            with open(path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only: the trainer may be mid-write
            self._offset += end
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                v, step = row.get(self.key), row.get("step")
                if (row.get("split") != self.split or not isinstance(v, (int, float))
                        or isinstance(v, bool) or not math.isfinite(v) or step is None
                        or int(step) in self._reported):
                    continue
                self._trial.report(float(v), int(step))
                self._reported.add(int(step))
                new = True
        if not new:
            return False
        final = self._final_step()
        if final is not None and max(self._reported) >= final:
            return False
        return self._trial.should_prune()


class OptunaSource:
    """The runner's source of jobs for an optuna study: asks, runs, tells."""

    def __init__(self, study: Study, root: Path, *, python: str, timeout: float | None,
                 workers: int, log):
        optuna = _optuna()
        self.optuna, self.study, self.root = optuna, study, Path(root)
        self.spec = study.optuna
        self.python, self.timeout, self.log = python, timeout, log
        self.limit = workers
        self.n_trials = self.spec["n_trials"]
        self.storage_url = storage_url(study, root)
        optuna.create_study(study_name=study.name, storage=self.storage_url,
                            direction=self.spec["direction"], load_if_exists=True)
        self.ostudy = optuna.load_study(study_name=study.name, storage=self.storage_url,
                                        sampler=_sampler(optuna, self.spec),
                                        pruner=_pruner(optuna, self.spec))
        self.split, self.key, _ = parse_metric(self.spec["metric"])
        running = optuna.trial.TrialState.RUNNING
        self.resume = [(tr, fz) for tr, fz in self._known() if fz.state == running]

    def _known(self):
        return [(_trial(self.study, self.root, t.number, t.user_attrs["overrides"]), t)
                for t in self.ostudy.trials if "overrides" in t.user_attrs]

    def known_trials(self) -> list[Trial]:
        return [t for t, _ in self._known()]

    def known_statuses(self) -> dict[str, str]:
        """The statuses the workdirs cannot tell: a pruned trial's workdir looks started.
        (A workdir that says done is done, whatever the storage says: see ``done``.)"""
        pruned = self.optuna.trial.TrialState.PRUNED
        return {t.name: "pruned" for t, fz in self._known()
                if fz.state == pruned and Workdir(t.workdir).status() != "done"}

    def _unit(self, trial: Trial, trial_id: int):
        # The runner's Unit, built here from plain parts to keep the import one way.
        wd = Workdir(trial.workdir)
        monitor = None
        if self.spec["pruner"] != "none":
            monitor = OptunaPruning(self.storage_url, self.study.name, trial_id,
                                    str(wd.metrics_path), self.split, self.key,
                                    {"pruner": self.spec["pruner"],
                                     "pruner_kwargs": self.spec["pruner_kwargs"]})
        job = Job(trial.name, trial.command(self.python), wd.stdout_path, wd.stderr_path,
                  self.timeout, monitor)
        return _SearchUnit(job, [trial], trial.name, trial_id)

    def take(self, n: int | None):
        out = []
        while self.resume and (n is None or len(out) < n):
            trial, frozen = self.resume.pop(0)
            self.log(f"[sweep] resume {trial.name} (Optuna trial {frozen.number} was running)")
            out.append(self._unit(trial, frozen._trial_id))
        while (n is None or len(out) < n) and len(self.ostudy.trials) < self.n_trials:
            otrial = self.ostudy.ask()
            overrides = {**_suggest(otrial, self.spec["space"]), SEED_KEY: self.study.seeds[0]}
            otrial.set_user_attr("overrides", overrides)
            trial = _trial(self.study, self.root, otrial.number, overrides)
            otrial.set_user_attr("workdir", str(trial.workdir))
            out.append(self._unit(trial, otrial._trial_id))
        return out

    def value(self, trial: Trial) -> float | None:
        """The trial's final metric: ``eval.<key>`` from results.json, else the last row."""
        wd = Workdir(trial.workdir)
        if self.split == "eval":
            v = (wd.read_results() or {}).get("eval", {}).get(self.key)
        else:
            rows = [r for r in read_metrics(wd.path) if r.get("split") == self.split
                    and isinstance(r.get(self.key), (int, float))]
            v = rows[-1][self.key] if rows else None
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def done(self, unit, outcome: Outcome, statuses: list[str]) -> None:
        states = self.optuna.trial.TrialState
        (trial,), (status,) = unit.trials, statuses
        if outcome.returncode is None:
            return  # never started: it stays RUNNING in the storage and resumes next time
        if status == "pruned":  # the runner's verdict: stopped, and not done before the stop
            self.ostudy.tell(unit.trial_id_number(self.ostudy), state=states.PRUNED)
            return
        value = self.value(trial) if status == "done" else None
        if value is None:
            self.ostudy.tell(unit.trial_id_number(self.ostudy), state=states.FAIL)
        else:
            self.ostudy.tell(unit.trial_id_number(self.ostudy), value)


@dataclasses.dataclass
class _SearchUnit:
    job: Job
    trials: list[Trial]
    what: str
    trial_id: int
    # The runner's Unit protocol: evaluations run after the training. A search has no
    # eval grid (rnnjax.sweeps.study refuses one), so none.
    evals: list = dataclasses.field(default_factory=list)

    def trial_id_number(self, ostudy) -> int:
        """``study.tell`` takes a trial number; the storage keys trials by id."""
        return ostudy._storage.get_trial_number_from_id(self.trial_id)


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------
def search_report(study: Study, root: str | Path, top: int = 5) -> list[str]:
    """Markdown lines: the best trials and each parameter's importance."""
    optuna = _optuna()
    try:
        ostudy = optuna.load_study(study_name=study.name, storage=storage_url(study, root))
    except KeyError:
        return ["No Optuna trials in the storage yet."]
    states = optuna.trial.TrialState
    frozen = ostudy.trials
    counts = {s.name.lower(): sum(t.state == s for t in frozen) for s in states
              if any(t.state == s for t in frozen)}
    spec = study.optuna
    lines = [f"Optuna search: {len(frozen)} of {spec['n_trials']} trials "
             f"({', '.join(f'{v} {k}' for k, v in counts.items())}); sampler "
             f"{spec['sampler']}, pruner {spec['pruner']}, {spec['direction']} "
             f"{spec['metric']}.", ""]
    complete = [t for t in frozen if t.state == states.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=spec["direction"] == "maximize")
    names = _names(study)
    if complete:
        keys = list(spec["space"])
        lines += [f"Best trials by {spec['metric']}:", "",
                  "| trial | " + " | ".join(names[k] for k in keys) + f" | {spec['metric']} |",
                  "|" + "---|" * (len(keys) + 2)]
        for t in complete[:top]:
            cells = [str(t.number)] + [f"{t.params[k]:.4g}" if isinstance(t.params[k], float)
                                       else str(t.params[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + f" | {t.value:.4g} |")
        lines.append("")
    # PED-ANOVA, named: it needs no scikit-learn (fANOVA does) and is deterministic, and
    # Optuna's default evaluator changed between versions (fANOVA in 4.x, PED-ANOVA in 5).
    # Its authors ask for at least 5 trials in the top quantile: the best 10%, or 5 trials.
    q = min(0.5, max(0.1, 5 / len(complete))) if complete else 0.1
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=q)
    try:
        imp = optuna.importance.get_param_importances(ostudy, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:  # too few completed trials to tell
        lines += [f"Parameter importance: not available ({e}).", ""]
    else:
        lines += [f"Parameter importance (PED-ANOVA, Watanabe et al. 2023: how differently "
                  f"each parameter is spread among the best {q:.0%} of the {len(complete)} "
                  f"complete trials than among all of them; shares summing to 1):", ""]
        lines += [f"- `{k}`: {v:.3f}" for k, v in imp.items()] + [""]
    return lines
