"""Segment resets: a packed row runs as its segments run apart, for every cell and scan mode.

Reference: the same segments run one by one (a batch of segments, each from the initial
carry, ragged lengths). Packed inputs give the same per-segment outputs and the same final
carries (the row's last segment forward, its first in reverse), for every registered cell
in :data:`rnnjax.nn.CELLS` and every time loop it has (the fused LSTM/GRU loops and their
plain scans, linear_scan sequential/associative, log-space, the LRU), one and two
directions. The fused loops' hand-written backward with resets is checked against the
plain scan's autodiff. Hypothesis draws the segment lengths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.nn import CELLS, Bidirectional, Recurrent, known_cells, make_cell
from rnnjax.nn.linear_scan import linear_scan, log_linear_scan

E, H, T = 3, 4, 9
TOL = 2e-5

# Every time loop a cell has; a registered cell not listed here runs with its defaults.
MODES: dict[str, list[dict]] = {
    "lstm": [{"impl": "auto"}, {"impl": "scan"}],
    "gru": [{"impl": "auto"}, {"impl": "scan"}, {"reset_before": True}],
    "min_gru": [{"scan_mode": "sequential"}, {"scan_mode": "associative"},
                {"scan_mode": "log_space"}, {"log_space": False, "scan_mode": "associative"}],
    "min_lstm": [{"scan_mode": "sequential"}, {"scan_mode": "associative"},
                 {"scan_mode": "log_space"}],
    "lru": [{"scan_mode": "sequential"}, {"scan_mode": "associative"}],
    "lstmp": [{"proj_size": 2}],
    "peephole_lstm": [{}, {"zoneout": 0.2}],  # zoneout (eval mode here): the zoned scan
    "indrnn": [{"activation": "relu"}, {"activation": "identity", "scan_mode": "sequential"},
               {"activation": "identity", "scan_mode": "associative"}],
}


def cases():
    for name in known_cells():
        for kw in MODES.get(name, [{}]):
            yield pytest.param(name, kw, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}")


# Two rows: [3, 4, 2] filling T, and [1, 5] then padding (ragged).
SEGMENTS = [[3, 4, 2], [1, 5]]


def packed(segments, x_segs):
    """Packs per-segment inputs into rows: ``x`` (B, T, E), ``resets`` (B, T), lengths (B,)."""
    B = len(segments)
    x = np.zeros((B, T, E), np.float32)
    resets = np.zeros((B, T), bool)
    lengths = np.zeros(B, np.int32)
    k = 0
    for b, row in enumerate(segments):
        t = 0
        for n in row:
            x[b, t : t + n] = x_segs[k, :n]
            resets[b, t] = True
            t += n
            k += 1
        lengths[b] = t
    return x, resets, lengths


def build(name, kw, reverse_too: bool):
    def rec(reverse, seed):
        cell = make_cell(name, E, H, rngs=nnx.Rngs(seed), **kw)
        return Recurrent(cell, reverse=reverse, return_carry=True)

    # Eval mode: a regulariser's random masks would differ between the two runs compared.
    layer = (Bidirectional(rec(False, 0), rec(True, 1), return_carry=True) if reverse_too
             else rec(False, 0))
    layer.eval()
    return layer


@nnx.jit
def _run(layer, x, lengths, resets=None):
    return layer(x, seq_lengths=lengths, resets=resets)


def check_packed(layer, segments, seed=0, bidirectional=False):
    lens = [n for row in segments for n in row]
    rng = np.random.default_rng(seed)
    x_segs = rng.normal(size=(len(lens), T, E)).astype(np.float32)
    x, resets, lengths = packed(segments, x_segs)
    # Why nnx.jit: one compiled program per shape, not an op-by-op compile of every op.
    carry, y = _run(layer, jnp.asarray(x), jnp.asarray(lengths), jnp.asarray(resets))
    carry_s, y_s = _run(layer, jnp.asarray(x_segs), jnp.asarray(lens))
    y, y_s = np.asarray(y), np.asarray(y_s)
    k = 0
    for b, row in enumerate(segments):
        t = 0
        for n in row:
            np.testing.assert_allclose(y[b, t : t + n], y_s[k, :n], atol=TOL, rtol=0,
                                       err_msg=f"row {b} segment at t={t}")
            t += n
            k += 1
        assert np.all(y[b, t:] == 0.0)
    # Final carries: the last segment's (forward), the first's (reverse).
    last = np.cumsum([len(r) for r in segments]) - 1
    first = last - np.array([len(r) for r in segments]) + 1
    pairs = [(carry[0], carry_s[0], last), (carry[1], carry_s[1], first)] if bidirectional \
        else [(carry, carry_s, last)]
    for c, cs, idx in pairs:
        for leaf, leaf_s in zip(jax.tree.leaves(c), jax.tree.leaves(cs), strict=True):
            np.testing.assert_allclose(np.asarray(leaf), np.asarray(leaf_s)[idx], atol=TOL,
                                       rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(("name", "kw"), list(cases()))
def test_packed_segments_match_separate_runs(name, kw, bidirectional):
    layer = build(name, kw, bidirectional)
    check_packed(layer, SEGMENTS, bidirectional=bidirectional)


def test_every_registered_cell_is_covered():
    # A new cell runs with its defaults above; this reminds its author to list its modes.
    assert set(known_cells()) == set(CELLS)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=4), min_size=2, max_size=2)
       .filter(lambda rows: all(sum(r) <= T for r in rows)))
def test_hypothesis_segment_lengths_fused_lstm_and_log_space(rows):
    for name, kw in (("lstm", {"impl": "auto"}), ("min_gru", {"scan_mode": "log_space"})):
        check_packed(build(name, kw, True), rows, bidirectional=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_backward_with_resets_matches_autodiff(name, reverse):
    """The fused loops' hand-written VJP (gradients reaching h0 from every restart)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, T, E)).astype(np.float32))
    _, resets, lengths = packed(SEGMENTS, np.zeros((5, T, E), np.float32))
    w = jnp.asarray(rng.normal(size=(2, T, H)).astype(np.float32))

    def loss(layer, init):
        c, y = layer(x, seq_lengths=jnp.asarray(lengths), resets=jnp.asarray(resets),
                     initial_carry=init)
        return jnp.sum(y * w) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(c))

    grads = []
    for impl in ("fused", "scan"):
        cell = make_cell(name, E, H, rngs=nnx.Rngs(0), impl=impl)
        layer = Recurrent(cell, reverse=reverse, return_carry=True)
        init = jax.tree.map(lambda z: z + 0.3, cell.initialize_carry((2,)))
        g = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(layer, init)  # one program (§15)
        grads.append(jax.tree.leaves(g))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["sequential", "associative", "log_space"])
def test_linear_scans_with_resets_match_a_loop(mode, x64):
    """Against a float64 loop: ``h = h0`` before each restart, then ``a h + b``."""
    rng = np.random.default_rng(2)
    Tn, B, Hn = 7, 3, 2
    log_a = -rng.uniform(0.05, 2.0, size=(Tn, B, Hn))
    log_b = rng.normal(size=(Tn, B, Hn))
    h0 = rng.normal(size=(B, Hn))
    resets = rng.random((Tn, B)) < 0.35
    mask = np.arange(Tn)[:, None] < np.array([7, 5, 2])[None, :]
    for reverse in (False, True):
        want, h, order = np.zeros((Tn, B, Hn)), h0.copy(), range(Tn)
        for t in (reversed(order) if reverse else order):
            r, m = resets[t][:, None], mask[t][:, None]
            nh = np.exp(log_a[t]) * np.where(r, h0, h) + np.exp(log_b[t])
            h = np.where(m, nh, h)
            want[t] = np.where(m, nh, 0)
        args = (log_a, log_b, h0, jnp.asarray(mask))
        # Jitted: one program per direction, not every op compiled eagerly (§15).
        if mode == "log_space":
            h_last, hs = jax.jit(log_linear_scan, static_argnames=("mode", "reverse"))(
                *args, mode=mode, reverse=reverse, resets=jnp.asarray(resets))
        else:
            h_last, hs = jax.jit(linear_scan, static_argnames=("mode", "reverse"))(
                np.exp(log_a), np.exp(log_b), h0, jnp.asarray(mask), mode=mode, reverse=reverse,
                resets=jnp.asarray(resets))
        np.testing.assert_allclose(np.asarray(hs), want, atol=1e-10, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(h_last), h, atol=1e-10, rtol=1e-9)


def test_resets_shape_is_checked():
    layer = build("lstm", {}, False)
    with pytest.raises(ValueError, match="resets must have shape"):
        layer(jnp.zeros((2, T, E)), resets=jnp.zeros((T, 2), bool))
