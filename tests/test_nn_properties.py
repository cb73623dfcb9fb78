"""Property tests of :class:`rnnjax.nn.Recurrent`'s variable-length semantics (hypothesis).

For random small batches (``T`` from 1, all-equal or ragged lengths, forward or
reverse, every cell type) the layer must:

(a) output exact zeros at padded steps;
(b) give each row the final carry (and outputs) it gets when run alone on its own
    valid prefix, with no lengths at all;
(c) in reverse, equal the forward layer run on each row's reversed valid prefix,
    flipped back;
(d) give the same result for a boolean mask built from the lengths as for the lengths.

Every layer call goes through one ``nnx.jit`` function, so hypothesis examples that
repeat a shape reuse the compiled program; shapes are kept tiny for the same reason.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rnnjax.nn import Recurrent, make_cell

E, H = 2, 3
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
SETTINGS = settings(max_examples=12, deadline=None)  # plus the 4 corners, always run
TOL = 1e-6  # different batch sizes may round the matmuls differently


@functools.cache
def layer(kind: str, reverse: bool) -> Recurrent:
    """One layer per (cell, direction); the forward and reverse layers share the cell."""
    if reverse:
        return Recurrent(layer(kind, False).cell, reverse=True, return_carry=True)
    cell = make_cell(kind, E, H, rngs=nnx.Rngs(KINDS.index(kind)))
    rng = np.random.default_rng(0)
    for name in ("b_ih", "b_hh"):  # non-zero biases: padded zeros must not leak in
        p = getattr(cell, name)
        p[...] = jnp.asarray(rng.normal(size=p[...].shape), jnp.float32)
    return Recurrent(cell, return_carry=True)


@nnx.jit
def run(model, x, seq_lengths=None, mask=None):
    return model(x, seq_lengths=seq_lengths, mask=mask)


@st.composite
def batches(draw):
    """``(kind, reverse, x (B, T, E) float32, lengths (B,) int32)``."""
    kind = draw(st.sampled_from(KINDS))
    reverse = draw(st.booleans())
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 5))
    if draw(st.booleans()):
        lengths = [draw(st.integers(1, t))] * b
    else:
        lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).normal(size=(b, t, E)).astype(np.float32)
    return kind, reverse, x, np.asarray(lengths, np.int32)


def _case(kind, reverse, lengths, t):
    x = np.random.default_rng(len(lengths) * 10 + t).normal(size=(len(lengths), t, E))
    return kind, reverse, x.astype(np.float32), np.asarray(lengths, np.int32)


# Always run the corners, whatever hypothesis draws: T=1, all rows full, all rows equal
# but short, and a ragged reverse batch with a length-1 row.
CORNERS = [
    _case("lstm", True, [1, 1], 1),
    _case("gru", False, [4, 4, 4], 4),
    _case("rnn_tanh", True, [2, 2], 5),
    _case("rnn_relu", True, [5, 1, 3], 5),
]


def corners(test):
    for c in reversed(CORNERS):
        test = example(c)(test)
    return test


def row(tree, b):
    return jax.tree.map(lambda a: np.asarray(a[b]), tree)


def close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=TOL, rtol=0)


@SETTINGS
@given(batches())
@corners
def test_padding_is_zero_and_each_row_matches_its_own_truncated_run(case):
    kind, reverse, x, lengths = case
    carry, y = run(layer(kind, reverse), x, seq_lengths=lengths)
    y = np.asarray(y)
    pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    assert np.all(y[pad] == 0.0)  # (a), exactly
    for b, n in enumerate(lengths):  # (b)
        carry_b, y_b = run(layer(kind, reverse), x[b : b + 1, :n])
        close(row(carry, b), row(carry_b, 0))
        close(y[b, :n], np.asarray(y_b[0]))


@SETTINGS
@given(batches())
@corners
def test_reverse_equals_forward_on_each_reversed_prefix(case):
    kind, _, x, lengths = case
    carry, y = run(layer(kind, True), x, seq_lengths=lengths)
    for b, n in enumerate(lengths):  # (c)
        carry_f, y_f = run(layer(kind, False), x[b : b + 1, :n][:, ::-1])
        close(row(carry, b), row(carry_f, 0))
        close(np.asarray(y[b, :n]), np.asarray(y_f[0, ::-1]))


@SETTINGS
@given(batches())
@corners
def test_mask_from_lengths_equals_seq_lengths(case):
    kind, reverse, x, lengths = case
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T)
    by_lengths = run(layer(kind, reverse), x, seq_lengths=lengths)
    by_mask = run(layer(kind, reverse), x, mask=mask)  # (d)
    for u, v in zip(jax.tree.leaves(by_lengths), jax.tree.leaves(by_mask), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
