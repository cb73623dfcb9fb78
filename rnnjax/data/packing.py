"""Packing: many short sequences in one row, told apart by ``segment_ids``.

A padded batch of short, ragged sequences spends most of its ``B x T`` steps on padding.
Packing puts several sequences one after another in a row of ``T = capacity`` steps, and
``segment_ids`` ``(B, T)`` says which sequence each step belongs to: ``1, 2, ...`` in a row,
``0`` on the padding at its end. The recurrent layers restart from the initial carry at
every segment start (``resets``, made by ``rnnjax.models.common.segment_resets``), so every
segment gives the outputs it would give alone.

Rows are made by **first-fit decreasing** (:func:`first_fit_decreasing`): sequences in
order of decreasing length (ties by index), each into the first row with room. It is
deterministic, and it uses at most ``11/9 OPT + 6/9`` rows (Dósa 2007). The rows are fixed
once; :class:`PackedIterator` shuffles their order per epoch through
:class:`rnnjax.data.batching.BatchIterator`, so its position ``{"epoch", "index", "seed"}``
resumes exactly.

Per-segment values (a classifier's label) are laid out ``(B, S)`` with ``S`` the most
segments any row holds (fixed over the data set, so one compiled shape), with
``segment_mask`` ``(B, S)`` marking the real ones; per-step values (a tagger's targets)
are packed like the tokens.

What it buys (``scripts/bench_packing.py``, ``docs/bench/bench_packing_cpu_run{1,2}.json``;
LSTM 128 classifier, char level, sms_sample x 40, B=32, T=160, the shared 2-core CPU): packed
rows are 96% real tokens against 25% for padding to ``max_len``, and train 3.7x the real
tokens/s of it; but length bucketing (77% real, T ~ 48) was faster still, at 1.3-1.5x the
packed tokens/s, because a step over T=160 costs more per time step than one over T=48 on
this CPU. The resets themselves cost nothing measurable (-5% and -6%: the packed step was
not slower than the same rows without resets). Pack where bucketing cannot shorten T.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
Shape letters: ``B`` rows, ``T`` capacity, ``S`` segments per row, ``N`` sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rnnjax.data.batching import BatchIterator
from rnnjax.data.text import PAD_ID

__all__ = ["PackedIterator", "first_fit_decreasing", "pack_rows", "packing_stats"]


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of sequence indices, each with total length ``<= capacity``.

    Sequences are taken longest first (ties: lower index first) and each goes into the
    first bin, in creation order, with room for it. Within a bin the indices keep that
    order. A sequence longer than ``capacity`` is an error (truncate it first).
    """
    lengths = np.asarray(lengths, np.int64)
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if lengths.size and lengths.max() > capacity:
        i = int(np.argmax(lengths))
        raise ValueError(f"sequence {i} has length {lengths[i]} > capacity {capacity}; "
                         f"truncate to data.max_len first")
    if lengths.size and lengths.min() < 1:
        raise ValueError("every packed sequence needs length >= 1 (drop empty ones first)")
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # length desc, index asc
    room = np.empty(len(lengths), np.int64)  # remaining capacity per bin
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room[: len(bins)] >= lengths[i])
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = capacity
        bins[b].append(int(i))
        room[b] -= lengths[i]
    return bins


def pack_rows(sequences: Sequence[np.ndarray], bins: Sequence[Sequence[int]], capacity: int,
              *, max_segments: int, step_values: Mapping[str, Sequence[np.ndarray]] = (),
              segment_values: Mapping[str, np.ndarray] = (),
              pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
    """Lays the ``bins`` out as rows.

    Returns ``inputs`` ``(B, T)`` int32, ``segment_ids`` ``(B, T)`` int32 (1.. per segment,
    0 on padding), ``lengths`` ``(B,)`` (real steps per row), ``segment_mask`` ``(B, S)``,
    ``segment_ends`` ``(B, S)`` (the last step of each segment; 0 where there is none)
    and ``segment_starts`` ``(B, S)``; each ``step_values[k]`` (per-sequence arrays as long
    as the sequence) packed ``(B, T)`` (zero on padding); each ``segment_values[k]`` (one
    value per sequence, ``(N, ...)``) laid out ``(B, S, ...)``.
    """
    B, T, S = len(bins), capacity, max_segments
    out = {"inputs": np.full((B, T), pad_id, np.int32),
           "segment_ids": np.zeros((B, T), np.int32), "lengths": np.zeros(B, np.int32),
           "segment_mask": np.zeros((B, S), bool), "segment_ends": np.zeros((B, S), np.int32),
           "segment_starts": np.zeros((B, S), np.int32)}
    step_values = dict(step_values)
    segment_values = {k: np.asarray(v) for k, v in dict(segment_values).items()}
    for k, v in step_values.items():
        out[k] = np.zeros((B, T), np.asarray(v[0]).dtype if len(v) else np.int32)
    for k, v in segment_values.items():
        out[k] = np.zeros((B, S) + v.shape[1:], v.dtype)
    for r, members in enumerate(bins):
        if len(members) > S:
            raise ValueError(f"row {r} holds {len(members)} segments > max_segments={S}")
        t = 0
        for s, i in enumerate(members):
            n = len(sequences[i])
            out["inputs"][r, t:t + n] = sequences[i]
            out["segment_ids"][r, t:t + n] = s + 1
            out["segment_mask"][r, s] = True
            out["segment_starts"][r, s] = t
            out["segment_ends"][r, s] = t + n - 1
            for k, v in step_values.items():
                out[k][r, t:t + n] = v[i]
            for k, v in segment_values.items():
                out[k][r, s] = v[i]
            t += n
        out["lengths"][r] = t
    return out


def packing_stats(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> dict:
    """Rows, real tokens and the fill ratio (real tokens / (rows x capacity))."""
    tokens = int(np.sum(lengths))
    return {"sequences": len(lengths), "rows": len(bins), "tokens": tokens,
            "fill": tokens / max(len(bins) * capacity, 1),
            "max_segments": max((len(b) for b in bins), default=0)}


class PackedIterator(BatchIterator):
    """Batches of packed rows: the rows are made once by first-fit decreasing, and each
    epoch shuffles them (``BatchIterator``: a pure function of ``(seed, epoch)``, position
    ``{"epoch", "index", "seed"}``).

    Args:
      sequences: N int arrays, each of length ``1..capacity``.
      capacity: T, the row length.
      batch_size: B rows per batch.
      seed: the shuffle seed.
      step_values / segment_values: see :func:`pack_rows`.
      max_segments: S; default the most segments a row holds.
      shuffle, num_epochs, remainder: as ``BatchIterator`` (eval: ``shuffle=False``,
        ``num_epochs=1``, ``remainder="pad"``).
    """

    def __init__(self, sequences: Sequence[np.ndarray], capacity: int, batch_size: int, *,
                 seed: int = 0, step_values: Mapping[str, Sequence[np.ndarray]] | None = None,
                 segment_values: Mapping[str, np.ndarray] | None = None,
                 max_segments: int | None = None, shuffle: bool = True,
                 num_epochs: int | None = None, remainder: str = "drop"):
        self.sequences = [np.asarray(s) for s in sequences]
        self.capacity = capacity
        lengths = [len(s) for s in self.sequences]
        self.bins = first_fit_decreasing(lengths, capacity)
        self.stats = packing_stats(lengths, self.bins, capacity)
        self.max_segments = max_segments or self.stats["max_segments"]
        step_values = dict(step_values or {})
        segment_values = dict(segment_values or {})

        def collate(idx):
            return pack_rows(self.sequences, [self.bins[i] for i in idx], capacity,
                             max_segments=self.max_segments, step_values=step_values,
                             segment_values=segment_values)

        super().__init__(len(self.bins), batch_size, seed=seed, collate=collate,
                         shuffle=shuffle, num_epochs=num_epochs, remainder=remainder)
