"""Sequence regression and forecasting: real-valued sequence -> real vector.

``config.data.name`` picks the source:

* ``adding``: the adding problem (``data.seq_len``), generated on the fly;
  baseline MSE 1/6 (predicting 1.0);
* ``mackey_glass``: a Mackey-Glass series (``data.num_samples``) cut into
  windows (``data.window`` steps in, ``data.horizon`` out);
* ``csv``: one column (``data.column``, a name or index) of ``data.path``.

Series are split chronologically (train/val/test) and standardised with the
train statistics only. Metrics: MSE and MAE (in standardised units for series,
plus RMSE in the series' own units).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rnnjax.data import batching, series, synthetic
from rnnjax.data.streams import SyntheticIterator, fixed_batches, seed_stream
from rnnjax.models.sequence import SequenceModel
from rnnjax.tasks.base import Task, model_kwargs

SOURCES = ("adding", "mackey_glass", "csv")


class RegressionTask(Task):
    best_metric = "mse"
    best_mode = "min"
    eval_loss_metric = "mse"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        self.scaler = None
        if d.name == "adding":
            self.generate = lambda rng, b: _adding(rng, b, d.seq_len)
            self.in_features, self.out_features = 2, 1
        elif d.name in ("mackey_glass", "csv"):
            if d.name == "mackey_glass":
                values = synthetic.mackey_glass(d.num_samples)
            else:
                column = int(d.column) if str(d.column).lstrip("-").isdigit() else d.column
                values = series.read_csv_column(d.path, column)
            self.splits, self.scaler = series.windowed_splits(
                values, d.window, d.horizon, train_fraction=d.train_fraction,
                val_fraction=d.val_fraction)
            for part in ("train", "val"):
                if len(self.splits[part]["inputs"]) == 0:
                    raise ValueError(f"data: the {part} part of the series is too short for "
                                     f"window={d.window} + horizon={d.horizon}")
            self.generate = None
            self.in_features, self.out_features = 1, d.horizon
        else:
            raise ValueError(f"unknown data.name {d.name!r} for task regression; known: "
                             f"{list(SOURCES)}")

    def train_iterator(self, batch_size, seed):
        if self.generate is not None:
            return SyntheticIterator(self.generate, batch_size, seed_stream(seed, "train"))
        train = self.splits["train"]
        return batching.BatchIterator(len(train["inputs"]), batch_size,
                                      seed=seed_stream(seed, "train"),
                                      collate=batching.array_collate(train))

    def eval_batches(self, batch_size):
        if self.generate is not None:
            return fixed_batches(self.generate, batch_size, self.config.train.eval_batches,
                                 seed=seed_stream(self.config.seed, "eval"))
        val = self.splits["val"]
        it = batching.BatchIterator(len(val["inputs"]), batch_size, shuffle=False,
                                    remainder="pad", num_epochs=1,
                                    collate=batching.array_collate(val))
        return list(it)

    def build_model(self, rngs):
        return SequenceModel(**model_kwargs(
            SequenceModel, self.config.model, out_features=self.out_features,
            in_features=self.in_features, rngs=rngs))

    def loss(self, model, batch, task_state, train):
        pred = model(batch["inputs"], None)
        mse = jnp.mean((pred - batch["targets"]) ** 2)
        return mse, ({"mse": mse}, task_state)

    def eval_sums(self, model, batch):
        pred = model(batch["inputs"], None)
        err = pred - batch["targets"]
        w = batch.get("batch_mask", jnp.ones(err.shape[0], bool)).astype(err.dtype)[:, None]
        return {"se": jnp.sum(w * err**2), "ae": jnp.sum(w * jnp.abs(err)),
                "n": jnp.sum(w) * err.shape[1]}

    def summarize(self, sums):
        n = float(sums["n"])
        out = {"mse": float(sums["se"]) / n, "mae": float(sums["ae"]) / n}
        if self.config.data.name == "adding":
            out["baseline_mse"] = synthetic.ADDING_BASELINE_MSE
        if self.scaler is not None:
            out["rmse_original_units"] = float(np.sqrt(out["mse"]) * self.scaler.std)
        return out


def _adding(rng, batch_size, seq_len):
    b = synthetic.adding_problem(rng, batch_size, seq_len)
    return {"inputs": b["inputs"], "targets": b["targets"][:, None]}


TASK = RegressionTask
