"""The task interface: what the trainer asks of every task family.

A task module ``rnnjax/tasks/<name>.py`` defines ``TASK``, a subclass of
:class:`Task`; ``config.task = "<name>"`` selects it (module-name convention, so
the trainer never branches on a task name).

A task owns its data (train iterator with a resumable position, fixed eval
batches), builds its model from ``config.model``, and defines the loss and the
evaluation metrics. Batches are dicts of numpy arrays whose leading axis is the
batch ``B``; the trainer shards that axis over devices.

Tasks must never import the trainer or the CLI.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.data.streams import seed_stream
from rnnjax.models.common import activation_regularizers

Batch = dict[str, np.ndarray]


class Task:
    """Base class. Subclasses implement the methods that raise NotImplementedError.

    Attributes a subclass sets: ``best_metric`` (an eval metric name) and
    ``best_mode`` (``"min"`` or ``"max"``), used to keep the best checkpoint, and
    ``eval_loss_metric``: the eval metric that is the training objective on the eval
    set (lower is better; what NT-ASGD's ``monitor="eval"`` watches, as Merity et al.
    watch the validation loss).
    """

    best_metric: str = "loss"
    best_mode: str = "min"
    eval_loss_metric: str = "loss"

    def __init__(self, config, workdir: Path | None = None):
        self.config = config
        self.workdir = Path(workdir) if workdir is not None else None

    # data -------------------------------------------------------------------
    def train_iterator(self, batch_size: int, seed: int):
        """An iterator of train batches with ``state_dict()``/``load_state_dict()``."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> list[Batch]:
        raise NotImplementedError

    # model ------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def init_task_state(self, model, batch_size: int) -> Any:
        """State carried across train steps (e.g. a stateful LM's carry); default none."""
        return {}

    # objective ----------------------------------------------------------------
    def loss(self, model, batch, task_state, train: bool):
        """Returns ``(loss, (metrics, new_task_state))``; traced inside jit."""
        raise NotImplementedError

    def eval_sums(self, model, batch) -> dict[str, jax.Array]:
        """Per-batch sums that :meth:`summarize` turns into metrics; traced inside jit."""
        raise NotImplementedError

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    # extras -----------------------------------------------------------------
    def save_artifacts(self, workdir: Path) -> None:
        """Writes task files (vocabularies) into the workdir."""

    def final_report(self, model, workdir: Path) -> dict[str, Any]:
        """Extra end-of-run outputs (samples, plots); returns metrics to record."""
        return {}


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def activation_penalty(model_config, hidden, mask: jax.Array,
                       segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``model.ar_alpha * AR + model.tar_beta * TAR`` and the metrics to log (none when off).

    ``hidden`` is ``(h, h_dropped)`` from ``TokenModel(..., return_hidden=True)``; ``mask``
    ``(B, T)`` the valid steps; ``segment_ids`` ``(B, T)`` (packed rows) keeps TAR from
    differencing across a segment boundary. Training only: evaluation reports the plain
    cross-entropy, so regularised and unregularised runs compare on the same metric.
    """
    alpha = float(model_config.get("ar_alpha", 0.0))
    beta = float(model_config.get("tar_beta", 0.0))
    if not (alpha or beta):
        return jnp.zeros((), jnp.float32), {}
    h, h_dropped = hidden
    mask = mask.astype(bool)
    pair = mask[:, 1:] & mask[:, :-1]
    if segment_ids is not None:
        pair = pair & (segment_ids[:, 1:] == segment_ids[:, :-1])
    ar, tar = activation_regularizers(h, h_dropped, mask, pair)
    return alpha * ar + beta * tar, {"ar": ar, "tar": tar}


def model_kwargs(model_cls: type, model_config, **given) -> dict[str, Any]:
    """The keyword arguments for ``model_cls(...)``: ``given``, the rest from ``config.model``.

    Every keyword-only parameter of ``model_cls.__init__`` that ``given`` does not supply is
    read from ``model_config`` (a nested ConfigDict becomes a plain dict); keys the model does
    not take are ignored (``config.model`` serves every model). Model parameters that are
    config keys have no default in the model: their one default is the config schema
    (``rnnjax/config_schema.py`` ``base_config`` or the config file), so a missing key is an
    error here, not a silent second default.
    """
    out: dict[str, Any] = {}
    missing = []
    for name, p in inspect.signature(model_cls.__init__).parameters.items():
        if p.kind is not p.KEYWORD_ONLY or name in given:
            continue
        if name in model_config:
            value = model_config[name]
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        elif p.default is p.empty:
            missing.append(name)
    if missing:
        raise ValueError(f"config.model lacks {missing}, which {model_cls.__name__} needs; add "
                         f"them (with a comment) to the config file or to base_config() in "
                         f"rnnjax/config_schema.py")
    return {**out, **given}


def build(config, workdir: Path | None = None) -> tuple[Task, nnx.Module]:
    """Builds ``(task, model)`` from a config; used by training, evaluation and inference."""
    task = get_task(config.task)(config, workdir)
    model = task.build_model(nnx.Rngs(params=seed_stream(config.seed, "params"),
                                      dropout=seed_stream(config.seed, "dropout")))
    return task, model


def known_tasks() -> list[str]:
    import rnnjax.tasks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "base")


def get_task(name: str) -> type[Task]:
    """``rnnjax.tasks.<name>.TASK``; an unknown name lists the known tasks."""
    if name not in known_tasks():
        raise ValueError(f"unknown task {name!r}; known tasks: {known_tasks()}")
    return importlib.import_module(f"rnnjax.tasks.{name}").TASK
