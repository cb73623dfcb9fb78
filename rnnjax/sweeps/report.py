"""Ablation reports: one table and learning-curve plots from a sweep's workdirs.

``rnnjax report experiments/<study>.py [--root DIR]`` expands the study again
(:func:`rnnjax.sweeps.study.expand`), reads every trial's ``results.json``,
``failed.json`` and ``metrics.jsonl``, groups trials by their non-seed
overrides and writes, under ``<root>/report/``:

* ``table.md`` and ``table.csv``: per configuration, ``mean ± std`` over seeds of
  each study metric (sample std, ``ddof=1``; one seed shows the value alone),
  the success rate (seeds that reached the study's threshold, over done and
  failed seeds: a diverged seed did not succeed), and the number of seeds done,
  failed and pending. The best mean of each metric is bold;
* ``curves_<metric>.png``: the mean learning curve over seeds with a ±1 std
  band, one line per configuration, one panel per value of the study's
  ``plot.panel`` field.

Metric names (see :func:`rnnjax.sweeps.study.parse_metric`): ``eval.mse`` is the final
value in ``results.json``; ``<split>.<key>:<agg>`` aggregates the rows of
``metrics.jsonl`` (``train.grad_norm:max`` is the largest gradient-norm spike).

A study with an ``eval_grid`` has one row per training configuration x eval combination
(seeds aggregated as above): its ``eval.*`` values come from the trial's record of that
evaluation (``evals/<name>.json``, written by ``rnnjax eval --record``), and a trial
whose training failed counts as failed in each of its rows. The learning curves are the
training's, one line per training configuration; ``evals_<metric>.png`` adds the final
metric against the first eval axis, one line per combination of the others, one panel
per training configuration.

This module reads files only: it never imports models or the trainer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnjax.sweeps.search import search_report, search_trials
from rnnjax.sweeps.study import (
    SWEEP_FILE,
    Study,
    Trial,
    evaluations,
    expand,
    format_value,
    load_study,
    parse_metric,
    short_names,
)
from rnnjax.train.metrics import latest_rows, read_metrics
from rnnjax.train.workdir import Workdir

_OPS = {"<=": np.less_equal, ">=": np.greater_equal, "<": np.less, ">": np.greater}


@dataclasses.dataclass
class TrialResult:
    """A trial's outcome, or (``evaluation`` given) one of its eval-grid evaluations'."""

    trial: Trial
    status: str  # done | failed | started | pending (| pruned: an Optuna search stopped it)
    eval: dict[str, Any] | None
    rows: list[dict]
    error: str | None = None
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    record: str | None = None  # the evaluation's record name, where the status is its own

    @property
    def group(self) -> dict[str, Any]:
        """What the row it belongs to is defined by: the trial's non-seed overrides, then
        the eval combination's."""
        return {**self.trial.group, **self.evaluation}

    @property
    def label(self) -> str:
        """The trial's name, then the evaluation's record name where the status is the
        evaluation's (for failure lists)."""
        return self.trial.name + (f" {self.record}" if self.record else "")


def read_trial(trial: Trial) -> TrialResult:
    """A trial's status, final eval metrics (if done), metric rows and failure line."""
    wd = Workdir(trial.workdir)
    status = wd.status()
    ev = None
    if status == "done":
        ev = (wd.read_results() or {}).get("eval", {})
    error = None
    if status == "failed":
        info = wd.read_failure() or {}
        text = info.get("error") or info.get("stderr_tail") or ""
        lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
        error = lines[-1] if lines else f"return code {info.get('returncode')}"
    return TrialResult(trial, status, ev, latest_rows(read_metrics(wd.path)), error)


def read_evaluations(trial: Trial, trained: TrialResult | None = None) -> list[TrialResult]:
    """One result per eval-grid combination of ``trial``: the record's metrics where it is
    done; the training's status (and error) where the training is not done."""
    trained = trained or read_trial(trial)
    wd = Workdir(trial.workdir)
    out = []
    for evaluation in trial.evaluations:
        name = Workdir.eval_name(trial.eval_checkpoint, trial.eval_args(evaluation))
        if trained.status != "done":
            out.append(dataclasses.replace(trained, evaluation=evaluation))
            continue
        status, record = wd.eval_status(name), wd.read_eval(name) or {}
        error = None
        if status == "failed":
            lines = [ln for ln in str(record.get("error") or record.get("stderr_tail") or "")
                     .strip().splitlines() if ln.strip()]
            error = lines[-1] if lines else f"return code {record.get('returncode')}"
        out.append(TrialResult(trial, status, record.get("eval") if status == "done" else None,
                               trained.rows, error, evaluation, name))
    return out


def metric_value(metric: str, result: TrialResult) -> float:
    """One trial's value of ``metric``; NaN where it has none (not done, not logged)."""
    split, key, agg = parse_metric(metric)
    if agg is None and split == "eval" and result.eval is not None:
        v = result.eval.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    if agg is None:
        agg = "last"
        if split == "eval" and result.status != "done":
            return math.nan  # a final eval metric of an unfinished run does not exist
    # Non-finite values are logged as strings ("nan"); they carry no magnitude.
    values = [float(r[key]) for r in result.rows
              if r.get("split") == split and isinstance(r.get(key), (int, float))
              and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    if not values:
        return math.nan
    arr = np.asarray(values)
    return float({"max": np.max, "min": np.min, "mean": np.mean,
                  "last": lambda a: a[-1], "first": lambda a: a[0]}[agg](arr))


def _stats(values: Sequence[float]) -> dict[str, Any]:
    vals = [v for v in values if not math.isnan(v)]
    n = len(vals)
    return {"mean": float(np.mean(vals)) if n else math.nan,
            "std": float(np.std(vals, ddof=1)) if n >= 2 else math.nan,
            "n": n, "values": [float(v) for v in values]}


def summarize(study: Study, results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """One row per configuration (non-seed overrides), in the study's order."""
    groups: dict[str, list[TrialResult]] = {}
    for r in results:
        key = json.dumps(r.group, sort_keys=True, default=repr)
        groups.setdefault(key, []).append(r)
    rows = []
    for members in groups.values():
        status = [m.status for m in members]
        row = {"overrides": members[0].group, "seeds": len(members),
               "done": status.count("done"), "failed": status.count("failed"),
               "pending": len(members) - status.count("done") - status.count("failed"),
               "metrics": {}, "success": {},
               "errors": [(m.label, m.error) for m in members if m.status == "failed"]}
        for metric in study.metrics:
            row["metrics"][metric] = _stats([metric_value(metric, m) for m in members])
        for metric, (op, thr) in study.success.items():
            finished = [m for m in members if m.status in ("done", "failed")]
            hits = sum(1 for m in finished if m.status == "done"
                       and bool(_OPS[op](metric_value(metric, m), thr)))
            row["success"][metric] = {"hits": hits, "n": len(finished),
                                      "rate": hits / len(finished) if finished else math.nan}
        rows.append(row)
    return rows


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def _success_label(metric: str, cond: tuple[str, float]) -> str:
    return f"success {metric} {cond[0]} {cond[1]:g}"


def _columns(study: Study) -> tuple[list[str], dict[str, str]]:
    axes = study.axes + study.eval_axes
    return axes, short_names(axes)


def markdown_table(study: Study, rows: list[dict]) -> str:
    """The table as Markdown, best mean per metric in bold."""
    axes, names = _columns(study)
    best = {}
    for metric, better in study.metrics.items():
        means = [r["metrics"][metric]["mean"] for r in rows]
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            best[metric] = (min if better == "min" else max)(finite)
    header = [names[a] for a in axes]
    header += [f"{m} {'↓' if b == 'min' else '↑'}" for m, b in study.metrics.items()]
    header += [_success_label(m, c) for m, c in study.success.items()]
    header += ["seeds done", "failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [format_value(r["overrides"].get(a, "")) for a in axes]
        for metric in study.metrics:
            s = r["metrics"][metric]
            text = _fmt(s["mean"]) if s["n"] < 2 else f"{_fmt(s['mean'])} ± {_fmt(s['std'], 2)}"
            if s["n"] and best.get(metric) == s["mean"]:
                text = f"**{text}**"
            cells.append(text)
        for metric in study.success:
            s = r["success"][metric]
            cells.append(f"{s['hits']}/{s['n']}" if s["n"] else "—")
        cells += [f"{r['done']}/{r['seeds']}", str(r["failed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(study: Study, rows: list[dict]) -> str:
    axes, names = _columns(study)
    header = [names[a] for a in axes]
    for m in study.metrics:
        header += [f"{m} mean", f"{m} std", f"{m} n"]
    for m, c in study.success.items():
        header += [_success_label(m, c) + " rate", _success_label(m, c) + " n"]
    header += ["seeds", "done", "failed", "pending"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        line = [r["overrides"].get(a, "") for a in axes]
        for m in study.metrics:
            s = r["metrics"][m]
            line += [_csv_num(s["mean"]), _csv_num(s["std"]), s["n"]]
        for m in study.success:
            s = r["success"][m]
            line += [_csv_num(s["rate"]), s["n"]]
        line += [r["seeds"], r["done"], r["failed"], r["pending"]]
        w.writerow(line)
    return buf.getvalue()


def _csv_num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


# ---------------------------------------------------------------------------
# Learning curves.
# ---------------------------------------------------------------------------
def curve(result: TrialResult, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], float(r[key])) for r in result.rows
           if r.get("split") == split and isinstance(r.get(key), (int, float))
           and not isinstance(r.get(key), bool) and math.isfinite(float(r[key]))]
    pts.sort()
    return np.asarray([p[0] for p in pts]), np.asarray([p[1] for p in pts])


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds at every step any seed logged (std where >= 2 seeds)."""
    steps = np.unique(np.concatenate([c[0] for c in curves])) if curves else np.zeros(0)
    mean, std = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    for j, s in enumerate(steps):
        vals = [c[1][np.searchsorted(c[0], s)] for c in curves
                if np.searchsorted(c[0], s) < len(c[0]) and c[0][np.searchsorted(c[0], s)] == s]
        mean[j] = np.mean(vals)
        if len(vals) >= 2:
            std[j] = np.std(vals, ddof=1)
    return steps, mean, std


def plot_study(study: Study, results: Sequence[TrialResult], out_dir: str | Path) -> list[Path]:
    """``curves_<metric>.png``: mean ± std learning curves grouped by the swept fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = study.plot
    metric = opts.get("metric") or next(
        (m for m in study.metrics if parse_metric(m)[2] is None), "train.loss")
    split, key, _ = parse_metric(metric)
    panel = opts.get("panel")
    _, names = _columns(study)
    axes_keys = study.axes
    if panel is not None and panel in study.eval_axes:
        raise ValueError(f"study {study.name}: plot.panel {panel!r} is an eval_grid axis, "
                         f"which does not change training: the learning curves are the same "
                         f"in every panel. Panel by a training axis ({axes_keys}); the eval "
                         f"axes have their own plot, evals_<metric>.png")
    if panel is not None and panel not in axes_keys:
        raise ValueError(f"study {study.name}: plot.panel {panel!r} is not a swept field; "
                         f"swept: {axes_keys}")
    groups: dict[str, list[TrialResult]] = {}
    for r in results:
        groups.setdefault(json.dumps(r.trial.group, sort_keys=True, default=repr), []).append(r)
    panel_values = [None] if panel is None else list(dict.fromkeys(
        m[0].trial.group.get(panel) for m in groups.values()))
    labels = list(dict.fromkeys(
        _label({k: v for k, v in m[0].trial.group.items() if k != panel}, names)
        for m in groups.values()))
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    n = len(panel_values)
    fig, axs = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 3.6), sharey=True, squeeze=False)
    for ax, pv in zip(axs[0], panel_values):
        for members in groups.values():
            g = members[0].trial.group
            if panel is not None and g.get(panel) != pv:
                continue
            curves = [curve(m, split, key) for m in members]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            steps, mean, std = mean_curve(curves)
            lab = _label({k: v for k, v in g.items() if k != panel}, names)
            ax.plot(steps, mean, color=colors[lab], label=f"{lab} (n={len(curves)})",
                    marker="o" if len(steps) < 30 else None, markersize=3)
            ok = ~np.isnan(std)
            if ok.any():
                lo, hi = mean - std, mean + std
                if opts.get("logy"):
                    lo = np.where(lo > 0, lo, np.nanmin(mean[mean > 0]) if (mean > 0).any()
                                  else 1e-12)
                ax.fill_between(steps[ok], lo[ok], hi[ok], color=colors[lab], alpha=0.2,
                                linewidth=0)
        if opts.get("hline") is not None:
            ax.axhline(float(opts["hline"]), color="gray", linestyle="--", linewidth=1,
                       label=opts.get("hline_label", None))
        if opts.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        if panel is not None:
            ax.set_title(f"{names[panel]}={format_value(pv)}")
    axs[0][0].set_ylabel(metric)
    handles, labs = axs[0][0].get_legend_handles_labels()
    for ax in axs[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab.split(" (n=")[0] not in [x.split(" (n=")[0] for x in labs]:
                handles.append(h)
                labs.append(lab)
    fig.suptitle(f"{study.name}: {metric}, mean ± std over seeds", fontsize=9, x=0.01,
                 ha="left")
    right = 1
    if handles:
        # Room for the legend beside the panels, sized to its labels (fontsize 8: about
        # 0.065 in a character), in columns of at most 16 entries, the figure grown to fit.
        ncol = -(-len(labs) // 16)
        legend_w = ncol * (0.6 + 0.065 * max(len(lab) for lab in labs))
        width = 4.2 * n + 0.2 + legend_w
        fig.set_size_inches(width, max(3.6, 0.75 + 0.19 * -(-len(labs) // ncol)))
        right = 1 - legend_w / width
        fig.legend(handles, labs, loc="center right", fontsize=8, ncol=ncol)
    fig.tight_layout(rect=(0, 0, right, 0.95))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"curves_{metric.replace('.', '_').replace(':', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_evals(study: Study, rows: list[dict], out_dir: str | Path) -> list[Path]:
    """``evals_<metric>.png``: a final metric (mean ± std over seeds) against the first
    eval-grid axis, one line per combination of the other eval axes, one panel per
    training configuration. The metrics are ``plot.eval_metric`` (one name or a list),
    else the study's first final ``eval.*`` metric."""
    chosen = study.plot.get("eval_metric") or [
        m for m in study.metrics if parse_metric(m)[0] == "eval" and parse_metric(m)[2] is None
    ][:1]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    for m in chosen:
        if m not in study.metrics or parse_metric(m)[2] is not None:
            raise ValueError(f"study {study.name}: plot.eval_metric {m!r} must be one of the "
                             f"study's final metrics (no ':agg'): {list(study.metrics)}")
    if not study.eval_axes:
        return []
    return [_plot_eval_metric(study, rows, m, out_dir) for m in chosen]


def _plot_eval_metric(study: Study, rows: list[dict], metric: str, out_dir: str | Path
                      ) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, names = _columns(study)
    x_key, rest = study.eval_axes[0], study.eval_axes[1:]
    panels = list(dict.fromkeys(json.dumps({k: r["overrides"].get(k) for k in study.axes},
                                           default=repr) for r in rows))
    x_values = list(study.eval_grid[x_key])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    n = len(panels)
    fig, axs = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 3.6), sharey=True, squeeze=False)
    for ax, pkey in zip(axs[0], panels):
        train = json.loads(pkey)
        mine = [r for r in rows if all(json.dumps(r["overrides"].get(k), default=repr)
                                       == json.dumps(v, default=repr) for k, v in train.items())]
        lines = list(dict.fromkeys(json.dumps({k: r["overrides"].get(k) for k in rest},
                                              default=repr) for r in mine))
        for i, lkey in enumerate(lines):
            sel = [r for r in mine if json.dumps({k: r["overrides"].get(k) for k in rest},
                                                 default=repr) == lkey]
            xs = [r["overrides"][x_key] for r in sel]
            xs = xs if numeric else [x_values.index(x) for x in xs]
            mean = [r["metrics"][metric]["mean"] for r in sel]
            std = [0.0 if math.isnan(r["metrics"][metric]["std"]) else
                   r["metrics"][metric]["std"] for r in sel]
            ax.errorbar(xs, mean, yerr=std, marker="o", markersize=3, capsize=3,
                        label=_label(json.loads(lkey), names), color=plt.get_cmap("tab10")(i % 10))
        if numeric and min(x_values) > 0 and max(x_values) / min(x_values) >= 8:
            ax.set_xscale("log", base=2)
        ticks = x_values if numeric else range(len(x_values))
        ax.set_xticks(list(ticks), [format_value(v) for v in x_values])
        ax.minorticks_off()
        ax.set_xlabel(names[x_key])
        ax.grid(alpha=0.3)
        if train:
            ax.set_title(_label(train, names), fontsize=9)
    axs[0][0].set_ylabel(metric)
    if rest:
        axs[0][0].legend(fontsize=8)
    fig.suptitle(f"{study.name}: {metric} ({study.eval_checkpoint} checkpoint), mean ± std "
                 f"over seeds", fontsize=8, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"evals_{metric.replace('.', '_').replace(':', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(overrides: dict, names: dict[str, str]) -> str:
    return ",".join(f"{names.get(k, k)}={format_value(v)}" for k, v in overrides.items()) or "all"


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------
def report(study: str | Path | Study, root: str | Path | None = None, *,
           out_dir: str | Path | None = None, smoke: bool = False,
           plots: bool = True) -> dict[str, Any]:
    """Writes ``table.md``, ``table.csv`` and curve plots; returns paths and the Markdown."""
    if not isinstance(study, Study):
        study = load_study(study, smoke=smoke)
    root = Path(root) if root is not None else study.default_root()
    if not root.is_dir():
        raise FileNotFoundError(f"sweep root {str(root)!r} does not exist; run the study first "
                                f"(`rnnjax sweep {study.path or study.name}`) or pass --root")
    ran = root / SWEEP_FILE
    if ran.exists():
        try:
            ran_arg = json.loads(ran.read_text()).get("arg")
        except json.JSONDecodeError:
            ran_arg = study.arg
        if ran_arg != study.arg:
            hint = (" Add --smoke." if "smoke" in str(ran_arg or "").split(",") and
                    "smoke" not in str(study.arg or "").split(",") else "")
            raise ValueError(
                f"sweep root {root} holds the study run with arg {ran_arg!r}, not {study.arg!r}: "
                f"a report of the other variant would overwrite its report with an empty "
                f"table.{hint} Or pass the --root of the variant you mean.")
    extra: list[str] = []
    if study.optuna is not None:
        found = search_trials(study, root)
        trials = [t for t, _ in found]
        results = [read_trial(t) for t in trials]
        for r, (_, frozen) in zip(results, found):
            if frozen.state.name == "PRUNED" and r.status != "done":
                r.status = "pruned"  # its workdir holds a checkpoint, no results
        extra = search_report(study, root)
    else:
        trials = expand(study, root)
        results = [read_trial(t) for t in trials]
    # With an eval grid, a row per training configuration x eval combination; the
    # learning curves stay the training's (one line per training configuration).
    rowed = ([e for t, r in zip(trials, results) for e in read_evaluations(t, r)]
             if study.eval_grid else results)
    rows = summarize(study, rowed)
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(study, rows)
    plot_paths = plot_study(study, results, out) if plots else []
    if plots and study.eval_grid:
        plot_paths += plot_evals(study, rows, out)
    md = [f"# {study.name}", ""]
    if study.description:
        md += [study.description.strip(), ""]
    if study.eval_grid:
        n_evals = len(evaluations(study))
        what = (f"{len(trials)} trained runs ({len(rows) // n_evals} training configurations "
                f"x {len(study.seeds)} seeds), each evaluated from its {study.eval_checkpoint} "
                f"checkpoint in {n_evals} ways ({', '.join(study.eval_axes)}): "
                f"{len(rows)} rows")
    else:
        what = f"{len(trials)} trials ({len(rows)} configurations x {len(study.seeds)} seeds)"
    md += [f"Base config `{study.base}`; {what} in `{root}`. Mean ± std over seeds.", "",
           table, "", *extra]
    # A failed training is a failure of each of its rows: listed once.
    errors = list(dict.fromkeys(e for r in rows for e in r["errors"]))
    if errors:
        head = "Failed trials and evaluations:" if study.eval_grid else "Failed trials:"
        md += [head, ""] + [f"- `{n}`: {err}" for n, err in errors] + [""]
    for p in plot_paths:
        md += [f"![{p.stem}]({p.name})", ""]
    (out / "table.md").write_text("\n".join(md))
    (out / "table.csv").write_text(csv_text(study, rows))
    if extra:  # an Optuna search: the best trials and the importances, printed too
        table = "\n".join([table, "", *extra]).rstrip()
    return {"markdown": table, "table_md": out / "table.md", "table_csv": out / "table.csv",
            "plots": plot_paths, "rows": rows, "errors": errors}
