"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, a progress bar, plots.

All of it lives in the workdir, so a run can be understood without rerunning it:
``metrics.jsonl`` (one JSON object per line, ``{"step": s, "split": ..., ...}``),
``tb/`` (tensorboardX events) and ``plots/*.png`` (matplotlib, written at the end).
Nothing here talks to a network or a tracking service.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rnnjax.train.workdir import Workdir


def _scalar(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        arr = np.asarray(v)
    except Exception:
        return v
    if arr.ndim == 0:
        f = float(arr)
        return f if math.isfinite(f) else str(f)
    return arr.tolist()


class MetricWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard under ``workdir``."""

    def __init__(self, workdir: str | Path | Workdir, *, tensorboard: bool = True):
        self.workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        self.path = self.workdir.metrics_path
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir.tensorboard_dir))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> dict:
        row = {"step": int(step), "split": split, "time": time.time()}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "split", "time") and isinstance(v, (int, float)) \
                        and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """All rows of ``workdir/metrics.jsonl``; a torn last line (a killed run) is skipped."""
    path = Workdir(workdir).metrics_path
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def latest_rows(rows: Iterable[dict]) -> list[dict]:
    """Keeps the last row per ``(split, step)``: a resumed run rewrites some steps."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen[(r.get("split"), r.get("step"))] = r
    return sorted(seen.values(), key=lambda r: (r.get("split", ""), r.get("step", 0)))


class Progress:
    """A tqdm bar over steps that is silent when stderr is not a terminal."""

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None):
        from tqdm.auto import tqdm

        enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                        dynamic_ncols=True, leave=True)

    def set_loss(self, loss: float) -> None:
        self.bar.set_postfix({"loss": f"{loss:.4g}"}, refresh=False)

    def update(self, n: int, **postfix) -> None:
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                  for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def plot_curves(workdir: str | Path, keys: Iterable[str] | None = None,
                splits: Iterable[str] = ("train", "eval")) -> list[Path]:
    """Writes one PNG per metric (train and eval curves on one axis) to ``workdir/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = latest_rows(read_metrics(workdir))
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    splits = set(splits)
    for r in rows:
        if r.get("split") not in splits:
            continue
        for k, v in r.items():
            if k in ("step", "split", "time") or not isinstance(v, (int, float)) \
                    or isinstance(v, bool):
                continue
            series[k][r["split"]].append((r["step"], v))
    wanted = list(keys) if keys else sorted(series)
    out_dir = Workdir(workdir).plots_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in wanted:
        if k not in series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, pts in sorted(series[k].items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=split,
                    marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        vals = [p[1] for s in series[k].values() for p in s]
        if k in ("loss", "grad_norm", "grad_norm_clipped", "mse", "perplexity") and \
                min(vals) > 0 and max(vals) / min(vals) > 50:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(k)
        fig.tight_layout()
        path = out_dir / f"{k.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
