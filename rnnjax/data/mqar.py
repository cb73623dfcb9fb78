"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), numpy only.

Each example presents ``num_pairs`` key-value pairs, then a query region in which each key
comes back once, at a random even offset, among random filler tokens; at a key's query
position the model must output that key's value. As in Zoology's generator:

* keys are drawn without replacement from ``1 .. V/2 - 1`` and values from ``V/2 .. V - 1``
  (``V`` = ``vocab_size``, 8192 by default), so a key never doubles as a value;
* the context is ``k_1 v_1 k_2 v_2 ... k_P v_P`` (positions ``0 .. 2P-1``);
* query ``i`` sits at position ``2P + 2 g_i``, with distinct gaps ``g_i`` in
  ``0 .. (T - 2P)/2 - 1`` drawn with probabilities ``~ a g^(a-1)`` (``power_a`` = a =
  0.01: nearly all queries come soon after the context, a power law as for repeated
  bigrams in text);
* every other position of the query region is a uniform random token of the whole
  vocabulary (``random_non_queries``; 0 otherwise);
* the target of a query position is the value of the key read there; every other target is
  masked out (``loss_mask`` 0, target 0).

Zoology uses the same layout shifted by one (the label of the position before); here the
target is aligned with the input position that holds the query, which is the same
prediction for a causal model. Chance accuracy is ``2 / V`` (a value drawn blindly).

Train/test: Zoology draws 100k train and 3k test examples from different seeds and warns on
overlap; :func:`overlap` counts test examples that also occur in the train set (tests check
it is zero).

This module must never import jax or anything of rnnjax above ``rnnjax.data``.
"""

from __future__ import annotations

import numpy as np

#: The Zoology settings used here: (sequence length T, key-value pairs).
SETTINGS = ((64, 4), (128, 8), (256, 16))


def check_sizes(seq_len: int, num_pairs: int, vocab_size: int) -> None:
    """Raises ValueError naming the first size that cannot make a valid example."""
    if num_pairs < 1:
        raise ValueError(f"MQAR: num_pairs must be >= 1, got {num_pairs}")
    if seq_len % 2:
        raise ValueError(f"MQAR: seq_len must be even (pairs and query slots), got {seq_len}")
    if 4 * num_pairs > seq_len:
        raise ValueError(f"MQAR: seq_len={seq_len} is too short for {num_pairs} pairs: the "
                         f"context takes 2*pairs steps and the queries need as many again; "
                         f"seq_len >= {4 * num_pairs}")
    if vocab_size // 2 - 1 < num_pairs or vocab_size - vocab_size // 2 < num_pairs:
        raise ValueError(f"MQAR: vocab_size={vocab_size} has too few keys or values for "
                         f"{num_pairs} distinct pairs; vocab_size >= {2 * num_pairs + 2}")


def gap_probabilities(space: int, power_a: float) -> np.ndarray:
    """``p_g ~ a g^(a-1)`` for ``g = 1 .. space`` (Zoology's power law), normalised."""
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    return p / p.sum()


def mqar(rng: np.random.Generator, num_examples: int, seq_len: int = 64, num_pairs: int = 4,
         vocab_size: int = 8192, power_a: float = 0.01,
         random_non_queries: bool = True) -> dict[str, np.ndarray]:
    """``num_examples`` MQAR examples (see the module docstring).

    Returns ``inputs`` ``(N, T)`` int32, ``targets`` ``(N, T)`` int32 (0 where masked),
    ``loss_mask`` ``(N, T)`` float32 (1.0 at the ``num_pairs`` query positions).
    """
    check_sizes(seq_len, num_pairs, vocab_size)
    N, T, P = num_examples, seq_len, num_pairs
    half = vocab_size // 2
    context = 2 * P
    space = (T - context) // 2
    p = gap_probabilities(space, power_a)
    keys = np.empty((N, P), np.int64)
    values = np.empty((N, P), np.int64)
    gaps = np.empty((N, P), np.int64)
    for n in range(N):  # distinct draws per row; fast enough for 100k rows of <= 16 pairs
        keys[n] = 1 + rng.choice(half - 1, size=P, replace=False)
        values[n] = half + rng.choice(vocab_size - half, size=P, replace=False)
        gaps[n] = rng.choice(space, size=P, replace=False, p=p)
    inputs = np.zeros((N, T), np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    if random_non_queries:
        inputs[:, context:] = rng.integers(0, vocab_size, size=(N, T - context))
    query_pos = context + 2 * gaps  # (N, P)
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    targets = np.zeros((N, T), np.int64)
    np.put_along_axis(targets, query_pos, values, axis=1)
    loss_mask = np.zeros((N, T), np.float32)
    np.put_along_axis(loss_mask, query_pos, 1.0, axis=1)
    return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
            "loss_mask": loss_mask}


def overlap(train_inputs: np.ndarray, test_inputs: np.ndarray) -> int:
    """How many test rows occur verbatim among the train rows (Zoology's leakage check)."""
    seen = {row.tobytes() for row in np.ascontiguousarray(train_inputs)}
    return sum(row.tobytes() in seen for row in np.ascontiguousarray(test_inputs))
