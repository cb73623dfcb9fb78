"""Streams of batches: resumable synthetic iterators, fixed eval sets, named seed streams.

* :func:`seed_stream` turns a run's ``config.seed`` into the seed of one named use
  (parameter init, dropout, train data, the fixed eval set ...). Every seed a task or
  ``tasks.base.build`` derives comes from :data:`SEED_STREAMS`, the one table below.
* :class:`SyntheticIterator` draws batch ``i`` from ``default_rng([seed, i])``: its
  position is one integer, so a resumed run sees exactly the batches an uninterrupted
  run would have seen. :func:`fixed_batches` is a fixed evaluation set drawn the same way.
* :func:`resolve_path` maps ``builtin:NAME`` to a text shipped in ``rnnjax/data/builtin``.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "BUILTIN_DIR",
    "SEED_STREAMS",
    "SyntheticIterator",
    "fixed_batches",
    "resolve_path",
    "seed_stream",
]

Batch = dict[str, np.ndarray]

#: Named seed streams: ``seed_stream(seed, name) = seed + SEED_STREAMS[name]``.
#:
#: The offsets are the arithmetic the tasks wrote inline before this table existed
#: (``seed + 1``, ``10_000 + seed`` ...), kept so that every documented metric stays
#: reproducible with the same ``config.seed``. Streams with the same offset do not
#: collide: each feeds a different generator (JAX keys vs numpy, different shapes).
#:
#: ===================  ======  =================================================
#: name                 offset  used by
#: ===================  ======  =================================================
#: ``params``           0       ``nnx.Rngs(params=...)`` in ``tasks.base.build``
#: ``dropout``          1       ``nnx.Rngs(dropout=...)`` in ``tasks.base.build``
#: ``train``            0       every task's train data order (the trainer passes
#:                              ``config.seed``; tasks map it through this stream)
#: ``coins``            2       seq2seq scheduled sampling: ``fold_in(PRNGKey(.), step)``
#: ``embedding_init``   0       GloVe: random vectors for words the file lacks
#: ``eval``             10_000  the fixed synthetic eval set, far from any train seed
#: ===================  ======  =================================================
SEED_STREAMS: dict[str, int] = {
    "params": 0,
    "dropout": 1,
    "train": 0,
    "coins": 2,
    "embedding_init": 0,
    "eval": 10_000,
}


def seed_stream(seed: int, name: str) -> int:
    """The seed of stream ``name`` for a run with ``config.seed = seed`` (see SEED_STREAMS)."""
    if name not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {name!r}; known: {sorted(SEED_STREAMS)} "
                         f"(add a new stream to rnnjax.data.streams.SEED_STREAMS)")
    return int(seed) + SEED_STREAMS[name]


BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


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
                         "--config.data.path=input.txt (or builtin:NAME for a file in "
                         "rnnjax/data/builtin)")
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
