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
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Batch = dict[str, np.ndarray]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "builtin"


def resolve_path(path: str) -> Path:
    """``builtin:NAME`` -> the file shipped in ``rnnjax/data/builtin``; else the path."""
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        found = sorted(BUILTIN_DIR.glob(f"{name}.*"))
        if not found:
            known = sorted(p.stem for p in BUILTIN_DIR.iterdir())
            raise ValueError(f"unknown builtin text {name!r}; known: {known}")
        return found[0]
    if not path:
        raise ValueError("data.path is empty: give a UTF-8 text file, e.g. "
                         "--config.data.path=input.txt (or builtin:NAME for a file in rnnjax/data/builtin)")
    return Path(path)




class SyntheticIterator:
    """Batch ``i`` is ``generate(np.random.default_rng([seed, i]), batch_size)``.

    Its position is one integer, so a resumed run sees exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, generate: Callable[[np.random.Generator, int], Batch], batch_size: int,
                 seed: int):
        self.generate = generate
        self.batch_size = batch_size
        self.seed = seed
        self.index = 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self.generate(np.random.default_rng([self.seed, self.index]), self.batch_size)
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.seed = int(state["index"]), int(state["seed"])


def fixed_batches(generate, batch_size: int, num_batches: int, seed: int) -> list[Batch]:
    """A fixed evaluation set: ``num_batches`` synthetic batches from a separate seed."""
    it = SyntheticIterator(generate, batch_size, seed)
    return [next(it) for _ in range(num_batches)]


class Task:
    """Base class. Subclasses implement the methods that raise NotImplementedError.

    Attributes a subclass sets: ``best_metric`` (an eval metric name) and
    ``best_mode`` (``"min"`` or ``"max"``), used to keep the best checkpoint.
    """

    best_metric: str = "loss"
    best_mode: str = "min"

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


def build(config, workdir: Path | None = None) -> tuple[Task, nnx.Module]:
    """Builds ``(task, model)`` from a config; used by training, evaluation and inference."""
    task = get_task(config.task)(config, workdir)
    model = task.build_model(nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    return task, model


def known_tasks() -> list[str]:
    import rnnjax.tasks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "base")


def get_task(name: str) -> type[Task]:
    """``rnnjax.tasks.<name>.TASK``; an unknown name lists the known tasks."""
    if name not in known_tasks():
        raise ValueError(f"unknown task {name!r}; known tasks: {known_tasks()}")
    return importlib.import_module(f"rnnjax.tasks.{name}").TASK
