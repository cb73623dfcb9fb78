"""Batching: padding, length buckets, class balance, deterministic shuffles, resumable iteration.

Determinism is the point of this module. Every random choice of epoch ``e`` is drawn from
``np.random.default_rng([seed, e])``, so the batches of an epoch are a pure function of
``(seed, epoch)``. A ``BatchIterator`` therefore only needs ``{"epoch", "index", "seed"}`` (three
ints) to be checkpointed, and a restored iterator yields exactly the batches an uninterrupted one
would have.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
Shape letters: ``B`` batch, ``T`` time, ``N`` examples, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rnnjax.data.text import PAD_ID

__all__ = [
    "BatchIterator",
    "array_collate",
    "bucket_batches",
    "class_weights",
    "epoch_rng",
    "oversample_indices",
    "pad_sequences",
    "sequence_collate",
    "shuffled_indices",
    "split_indices",
]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for all random choices of ``epoch``: a pure function of ``(seed, epoch)``."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}.")
    return np.random.default_rng([int(seed), int(epoch)])


def shuffled_indices(n: int, seed: int, epoch: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``(seed, epoch)``: (n,) int64."""
    return epoch_rng(seed, epoch).permutation(n)


def pad_sequences(
    sequences: Sequence[Sequence[int] | np.ndarray],
    *,
    max_len: int | None = None,
    on_overflow: str = "truncate",
    pad_to_max_len: bool = False,
    multiple_of: int = 1,
    pad_id: int = PAD_ID,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length int sequences into one array.

    Args:
      sequences: B sequences of ints (lists or 1-D arrays); empty sequences are allowed.
      max_len: longest allowed length, or None for no limit.
      on_overflow: what to do with a sequence longer than ``max_len``: ``"truncate"`` keeps its
        first ``max_len`` tokens, ``"error"`` raises a ValueError naming it.
      pad_to_max_len: make ``T = max_len`` (fixed shapes, so a jitted step compiles once).
      multiple_of: round ``T`` up to a multiple of this (few distinct shapes, few recompiles).
        When ``max_len`` is set, ``T`` is never rounded past it.
      pad_id: fill value (``<pad>`` = 0 by default).

    Returns:
      ``tokens`` (B, T) int32 and ``lengths`` (B,) int32 (lengths after truncation). ``T`` is the
      longest length, rounded as above, and at least 1 so that the array is never empty in time.
    """
    if on_overflow not in ("truncate", "error"):
        raise ValueError(f"on_overflow must be 'truncate' or 'error', got {on_overflow!r}.")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    if pad_to_max_len and max_len is None:
        raise ValueError("pad_to_max_len=True needs max_len.")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}.")
    seqs = [np.asarray(s) for s in sequences]
    for i, s in enumerate(seqs):
        if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
            raise ValueError(
                f"sequence {i} must be a 1-D sequence of ints, got shape {s.shape}, "
                f"dtype {s.dtype}."
            )
        if max_len is not None and len(s) > max_len and on_overflow == "error":
            raise ValueError(
                f"sequence {i} has length {len(s)} > max_len={max_len}; raise max_len or use "
                "on_overflow='truncate'."
            )
    lengths = np.array(
        [len(s) if max_len is None else min(len(s), max_len) for s in seqs], dtype=np.int32
    )
    if pad_to_max_len:
        t = max_len
    else:
        t = max(1, int(lengths.max(initial=0)))
        t = int(math.ceil(t / multiple_of) * multiple_of)
        if max_len is not None:
            t = min(t, max_len)
    tokens = np.full((len(seqs), t), pad_id, dtype=np.int32)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        tokens[i, :n] = s[:n]
    return tokens, lengths


def bucket_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    pool_batches: int = 50,
    shuffle: bool = True,
    drop_last: bool = False,
    indices: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Group examples of similar length into batches, to reduce padding.

    The examples (``indices``, default all) are shuffled, cut into pools of
    ``pool_batches * batch_size``, each pool is sorted by length (stable), cut into batches, and
    the batch order is shuffled. Large pools mean less padding, small pools more randomness.
    Everything is drawn from ``epoch_rng(seed, epoch)``.

    Args:
      lengths: (N,) length of every example.
      batch_size: B.
      indices: which examples to batch (may repeat, e.g. from ``oversample_indices``).
      shuffle: if False, no shuffling at all: one pool-sort of the given order.
      drop_last: drop the one batch with fewer than B examples, if any.

    Returns:
      A list of int64 index arrays, each of size B (the last possibly smaller, kept at the end).
    """
    lengths = np.asarray(lengths)
    if batch_size < 1 or pool_batches < 1:
        raise ValueError(
            f"batch_size and pool_batches must be >= 1, got {batch_size}, {pool_batches}."
        )
    idx = np.arange(len(lengths)) if indices is None else np.asarray(indices, dtype=np.int64)
    rng = epoch_rng(seed, epoch)
    if shuffle:
        idx = idx[rng.permutation(len(idx))]
    pool = pool_batches * batch_size
    ordered = np.concatenate(
        [
            idx[s : s + pool][np.argsort(lengths[idx[s : s + pool]], kind="stable")]
            for s in range(0, len(idx), pool)
        ]
        or [np.zeros(0, np.int64)]
    )
    batches = [ordered[s : s + batch_size] for s in range(0, len(ordered), batch_size)]
    last = batches.pop() if batches and len(batches[-1]) < batch_size else None
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    if last is not None and not drop_last:
        batches.append(last)
    return batches


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-class loss weights inversely proportional to class frequency.

    ``w[c] = N / (C * n_c)`` (scikit-learn's "balanced"), so every class carries the same total
    weight and the mean weight over the examples is 1, which keeps the loss scale unchanged. A
    class with no examples gets weight 0.

    Returns:
      (C,) float32, ``C = num_classes`` or ``max(labels) + 1``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or (y < 0).any():
        raise ValueError("labels must be a non-empty 1-D array of non-negative ints.")
    c = int(y.max()) + 1 if num_classes is None else num_classes
    if y.max() >= c:
        raise ValueError(f"label {int(y.max())} is >= num_classes={c}.")
    counts = np.bincount(y, minlength=c).astype(np.float64)
    present = counts > 0
    w = np.zeros(c)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


def oversample_indices(
    labels: Sequence[int] | np.ndarray, seed: int = 0, epoch: int = 0
) -> np.ndarray:
    """Indices that balance the classes by oversampling the smaller ones.

    Every example appears at least once; each class ``c`` is topped up to the size of the largest
    class with extra draws (with replacement) from its own examples. The result is shuffled.
    Drawn from ``epoch_rng(seed, epoch)``, so each epoch repeats different minority examples.

    Returns:
      (C_present * n_max,) int64 indices into ``labels``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("labels must be a non-empty 1-D array.")
    rng = epoch_rng(seed, epoch)
    classes, counts = np.unique(y, return_counts=True)
    n_max = counts.max()
    parts = []
    for c, n in zip(classes, counts):
        members = np.flatnonzero(y == c)
        extra = rng.choice(members, size=n_max - n, replace=True)
        parts.append(np.concatenate([members, extra]))
    out = np.concatenate(parts)
    return out[rng.permutation(len(out))]


def split_indices(
    n: int,
    val_fraction: float,
    seed: int = 0,
    stratify: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random train/val split of ``range(n)``.

    With ``stratify`` (labels, (n,)), each class is split separately, so both parts keep the class
    proportions (important for imbalanced sets such as SMS spam). Each class contributes
    ``round(n_c * val_fraction)`` validation examples.

    Returns:
      ``(train_idx, val_idx)``, sorted int64 arrays that partition ``range(n)``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        y = np.asarray(stratify)
        if y.shape != (n,):
            raise ValueError(f"stratify must have shape ({n},), got {y.shape}.")
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    val = []
    for g in groups:
        g = g[rng.permutation(len(g))]
        val.append(g[: int(round(len(g) * val_fraction))])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def array_collate(data: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A collate function that gathers rows of equally long arrays: ``{k: v[indices]}``.

    Args:
      data: arrays that all have the same leading size N.
    """
    sizes = {k: len(v) for k, v in data.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"all arrays must have the same leading size, got {sizes}.")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    return lambda idx: {k: v[idx] for k, v in arrays.items()}


def sequence_collate(
    sequences: Sequence[Sequence[int] | np.ndarray],
    extras: Mapping[str, np.ndarray] | None = None,
    **pad_kwargs: Any,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A collate function for variable-length token sequences.

    Returns ``idx -> {"inputs": (B, T) int32, "lengths": (B,) int32, **{k: v[idx]}}`` where the
    padding follows ``pad_sequences(**pad_kwargs)`` (``max_len``, ``multiple_of``, ...), and
    ``extras`` are per-example arrays of leading size N (e.g. ``{"targets": labels}``).
    """
    extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
    for k, v in extras.items():
        if len(v) != len(sequences):
            raise ValueError(f"extras[{k!r}] has {len(v)} rows, expected {len(sequences)}.")
    if pad_kwargs:
        pad_sequences([], **pad_kwargs)  # fail on bad options now, not at the first batch

    def collate(idx: np.ndarray) -> dict[str, np.ndarray]:
        tokens, lengths = pad_sequences([sequences[i] for i in idx], **pad_kwargs)
        return {"inputs": tokens, "lengths": lengths, **{k: v[idx] for k, v in extras.items()}}

    return collate


class BatchIterator:
    """An epoch-based, exactly resumable iterator over batches of example indices.

    Each epoch's batches are a pure function of ``(seed, epoch)`` (see ``epoch_batches``): the
    examples are optionally oversampled to balance classes, shuffled, optionally bucketed by
    length, and cut into batches of ``batch_size``. ``next()`` walks through them and moves on to
    the next epoch. ``state_dict()`` is ``{"epoch", "index", "seed"}`` (ints; ``index`` counts the
    batches already produced in ``epoch``), and ``load_state_dict`` restores it, so resuming from a
    checkpoint yields the same batches as never having stopped.

    Args:
      num_examples: N.
      batch_size: B.
      collate: maps an int64 index array (B,) to a batch (e.g. ``array_collate``,
        ``sequence_collate``); None yields the index arrays themselves.
      seed: base seed of the shuffles (>= 0).
      shuffle: shuffle each epoch; if False the order is 0..N-1 (pool-sorted when bucketing;
        oversampled epochs are always in random order).
      remainder: the last, smaller batch of an epoch: ``"drop"`` it, ``"keep"`` it, or ``"pad"``
        it to B by repeating its first index and add ``batch["batch_mask"]`` (B,) bool, True on
        real examples (fixed shapes for a jitted eval step; needs a dict-valued collate). With
        ``"pad"`` every batch gets a ``batch_mask``.
      lengths: (N,) example lengths; when given, batches are bucketed by length
        (``bucket_batches`` with ``pool_batches``).
      labels: (N,) int class labels, needed by ``imbalance``.
      imbalance: None; ``"oversample"`` (balance classes by oversampling, per epoch; the epoch then
        has ``C * n_max`` examples); or ``"weight"`` (add ``batch["example_weights"]`` (B,) float32,
        ``class_weights(labels)[label]``; needs a dict-valued collate).
      num_epochs: stop (StopIteration) after this many epochs; None iterates forever.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        collate: Callable[[np.ndarray], Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        remainder: str = "drop",
        lengths: Sequence[int] | np.ndarray | None = None,
        pool_batches: int = 50,
        labels: Sequence[int] | np.ndarray | None = None,
        imbalance: str | None = None,
        num_epochs: int | None = None,
    ):
        if num_examples < 1 or batch_size < 1:
            raise ValueError(
                f"num_examples and batch_size must be >= 1, got {num_examples}, {batch_size}."
            )
        if remainder not in ("drop", "keep", "pad"):
            raise ValueError(f"remainder must be 'drop', 'keep' or 'pad', got {remainder!r}.")
        if imbalance not in (None, "oversample", "weight"):
            raise ValueError(
                f"imbalance must be None, 'oversample' or 'weight', got {imbalance!r}."
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.collate = collate
        self.seed = int(seed)
        self.shuffle = shuffle
        self.remainder = remainder
        self.pool_batches = pool_batches
        self.num_epochs = num_epochs
        self.imbalance = imbalance
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and self.lengths.shape != (num_examples,):
            raise ValueError(
                f"lengths must have shape ({num_examples},), got {self.lengths.shape}."
            )
        self.labels = None if labels is None else np.asarray(labels)
        if imbalance is not None:
            if self.labels is None:
                raise ValueError(f"imbalance={imbalance!r} needs labels.")
            if self.labels.shape != (num_examples,):
                raise ValueError(
                    f"labels must have shape ({num_examples},), got {self.labels.shape}."
                )
        self.class_weights = (
            class_weights(self.labels) if imbalance == "weight" else None
        )
        if imbalance == "oversample":
            counts = np.unique(self.labels, return_counts=True)[1]
            self.examples_per_epoch = len(counts) * int(counts.max())
        else:
            self.examples_per_epoch = num_examples
        full, rest = divmod(self.examples_per_epoch, batch_size)
        self.batches_per_epoch = full + (1 if rest and remainder != "drop" else 0)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.examples_per_epoch} examples make no full batch of {batch_size} with "
                "remainder='drop'; lower batch_size or use remainder='keep'/'pad'."
            )
        self.epoch = 0
        self.index = 0
        self._plan_epoch: int | None = None
        self._plan: list[np.ndarray] = []

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The index arrays of every batch of ``epoch``, in order (without padding)."""
        if self._plan_epoch == epoch:
            return self._plan
        rng = epoch_rng(self.seed, epoch)
        if self.imbalance == "oversample":
            # A separate stream from the shuffle below, so the two stay independent.
            idx = oversample_indices(self.labels, seed=int(rng.integers(2**63)), epoch=0)
        else:
            idx = np.arange(self.num_examples)
        if self.lengths is not None:
            batches = bucket_batches(
                self.lengths,
                self.batch_size,
                seed=int(rng.integers(2**63)),
                pool_batches=self.pool_batches,
                shuffle=self.shuffle,
                drop_last=self.remainder == "drop",
                indices=idx,
            )
        else:
            if self.shuffle:
                idx = idx[rng.permutation(len(idx))]
            batches = [idx[s : s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
            if self.remainder == "drop" and len(batches[-1]) < self.batch_size:
                batches.pop()
        assert len(batches) == self.batches_per_epoch
        self._plan_epoch, self._plan = epoch, batches
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.batches_per_epoch

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Any:
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        idx = self.epoch_batches(self.epoch)[self.index]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return self._make_batch(idx)

    def _make_batch(self, idx: np.ndarray) -> Any:
        n_real = len(idx)
        if self.remainder == "pad" and n_real < self.batch_size:
            idx = np.concatenate([idx, np.full(self.batch_size - n_real, idx[0])])
        batch = idx if self.collate is None else self.collate(idx)
        extra: dict[str, np.ndarray] = {}
        if self.remainder == "pad":
            extra["batch_mask"] = np.arange(len(idx)) < n_real
        if self.imbalance == "weight":
            extra["example_weights"] = self.class_weights[self.labels[idx]]
        if extra:
            if not isinstance(batch, dict):
                raise ValueError(
                    "remainder='pad' and imbalance='weight' add keys to the batch, so collate "
                    "must return a dict (e.g. array_collate)."
                )
            batch = {**batch, **extra}
        return batch

    def state_dict(self) -> dict[str, int]:
        """The position: ``{"epoch", "index", "seed"}``, all ints (checkpoint it)."""
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore a position from ``state_dict()``; the stored seed replaces the current one."""
        missing = {"epoch", "index", "seed"} - set(state)
        if missing:
            raise ValueError(f"iterator state lacks {sorted(missing)}; got keys {sorted(state)}.")
        epoch, index, seed = (int(state["epoch"]), int(state["index"]), int(state["seed"]))
        if epoch < 0 or seed < 0 or not 0 <= index < self.batches_per_epoch:
            raise ValueError(
                f"invalid iterator state {dict(state)}: need epoch >= 0, seed >= 0 and "
                f"0 <= index < {self.batches_per_epoch} (batches per epoch); was it saved "
                "with a different data set or batch size?"
            )
        if seed != self.seed:
            self._plan_epoch = None
        self.epoch, self.index, self.seed = epoch, index, seed
