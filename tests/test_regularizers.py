"""Weight drop, zoneout and locked dropout: identity (or expectation) in eval, right statistics
in training, and float64 finite-difference gradients with a fixed mask.

* eval: a cell with ``weight_drop`` is bitwise the cell without it; a cell with ``zoneout``
  is bitwise the loop ``p * prev + (1 - p) * step`` over the plain cell's step; a stack with
  locked dropout is bitwise the stack without dropout;
* training: drop rates within 5 sigma of ``p``; one weight-drop mask per call (the whole
  sequence, fused loop included, sees one dropped ``W_hh``) that differs between calls;
  zoneout masks differ across steps and rows; locked masks are constant over time and
  differ across sequences;
* gradients: with the rng state fixed (so is the mask), float64 central differences.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.nn import Recurrent, StackedRecurrent, make_cell, make_rnn, masked_scan

B, T, E, H = 4, 6, 3, 5
CELLS = ["lstm", "gru", "peephole_lstm", "layernorm_lstm", "layernorm_gru", "lstmp"]


def cell_kw(name):
    return {"proj_size": 3} if name == "lstmp" else {}


def pair(name, dtype=jnp.float32, **reg):
    """A regularised cell and the same cell (same parameters) without the regulariser."""
    kw = {**cell_kw(name), "param_dtype": dtype}
    reg_cell = make_cell(name, E, H, rngs=nnx.Rngs(params=0, dropout=1), **kw, **reg)
    plain = make_cell(name, E, H, rngs=nnx.Rngs(params=0), **kw)
    nnx.update(plain, nnx.state(reg_cell, nnx.Param))
    return reg_cell, plain


def x_in(seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, E)).astype(dtype))


def five_sigma(frac, p, n):
    return abs(frac - p) <= 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", CELLS)
def test_weight_drop_is_the_identity_in_eval(name):
    cell, plain = pair(name, weight_drop=0.5)
    layer = Recurrent(cell, return_carry=True)
    layer.eval()
    got = layer(x_in(), seq_lengths=jnp.array([6, 2, 5, 1]))
    want = Recurrent(plain, return_carry=True)(x_in(), seq_lengths=jnp.array([6, 2, 5, 1]))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", CELLS)
def test_zoneout_in_eval_is_the_expectation(name, x64):
    # float64 and 1e-12: the layer's jitted scan and this eager loop round differently
    # in float32 (one ulp of c ~ 1e-7), not in what they compute.
    p = 0.3
    cell, plain = pair(name, dtype=jnp.float64, zoneout=p)
    cell.eval()
    x = x_in(0, np.float64)
    carry, y = Recurrent(cell, return_carry=True)(x)
    c = plain.initialize_carry((B,), jnp.float64)
    xp = plain.project_inputs(jnp.swapaxes(x, 0, 1))
    w = plain._p("w_hh")
    for t in range(T):
        new, _ = plain._step(c, xp[t], w)
        c = jax.tree.map(lambda a, b: p * a + (1.0 - p) * b, c, new)
        np.testing.assert_allclose(np.asarray(y[:, t]), np.asarray(c[0] if name in (
            "lstm", "peephole_lstm", "layernorm_lstm", "lstmp") else c), atol=1e-12, rtol=0)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(c), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12, rtol=0)


def test_locked_dropout_is_the_identity_in_eval():
    x = x_in()
    stack = make_rnn("gru", E, H, num_layers=3, dropout=0.5, dropout_mode="locked",
                     rngs=nnx.Rngs(params=0, dropout=1))
    plain = make_rnn("gru", E, H, num_layers=3, rngs=nnx.Rngs(params=0))
    nnx.update(plain, nnx.state(stack, nnx.Param))
    stack.eval()
    np.testing.assert_array_equal(np.asarray(stack(x)), np.asarray(plain(x)))
    with pytest.raises(ValueError, match="unknown dropout_mode 'lockd'"):
        make_rnn("gru", E, H, num_layers=2, dropout=0.5, dropout_mode="lockd",
                 rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_weight_drop_one_mask_per_call_even_in_the_fused_loop(name):
    p = 0.4
    cell, _ = pair(name, weight_drop=p)
    assert cell.impl == "auto"
    w = np.asarray(cell._p("w_hh"))
    # The mask statistics over many draws, and one draw differs from the next.
    draws = [np.asarray(cell._w_hh()) for _ in range(20)]
    dropped = np.mean([np.mean(d == 0) for d in draws])
    assert five_sigma(dropped, p, 20 * w.size)
    assert not np.array_equal(draws[0] == 0, draws[1] == 0)
    kept = draws[0] != 0
    np.testing.assert_allclose(draws[0][kept], w[kept] / (1 - p), rtol=1e-6)
    # The next call's mask, drawn from a clone with the same rng state, serves every step.
    w_next = nnx.clone(cell)._w_hh()
    xp = cell.project_inputs(jnp.swapaxes(x_in(), 0, 1))
    c0 = cell.initialize_carry((B,))
    _, ys = cell.scan_projected(c0, xp)  # fused: one dropped W_hh for all T steps
    _, want = masked_scan(partial(cell._step, w_hh=w_next), c0, xp)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(want), atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_zoneout_masks_per_step_and_training_keeps_prev_or_new(name):
    p = 0.3
    cell, plain = pair(name, zoneout=p)
    c0 = plain.initialize_carry((B,))
    masks = jax.tree.leaves(cell.zone.masks(200, c0))
    for m in masks:
        m = np.asarray(m)
        assert m.shape == (200, B, H) and five_sigma(m.mean(), p, m.size)
        assert not np.array_equal(m[0], m[1]) and not np.array_equal(m[:, 0], m[:, 1])
    if name == "lstm":
        assert not np.array_equal(np.asarray(masks[0]), np.asarray(masks[1]))  # h, c apart
    # In training every unit is exactly its previous value or the step's new value, as the
    # mask drawn for this call says.
    x = x_in()
    xp = plain.project_inputs(jnp.swapaxes(x, 0, 1))
    m_next = nnx.clone(cell).zone.masks(T, c0)
    _, y = Recurrent(cell, return_carry=True)(x)
    c, w = c0, plain._p("w_hh")
    for t in range(T):
        new, _ = plain._step(c, xp[t], w)
        c = jax.tree.map(lambda a, b, m, t=t: jnp.where(m[t], a, b), c, new, m_next)
        h = c[0] if name == "lstm" else c
        np.testing.assert_allclose(np.asarray(y[:, t]), np.asarray(h), atol=1e-6, rtol=0)


def test_locked_dropout_masks_are_shared_over_time():
    p = 0.5
    stack = make_rnn("gru", E, H, num_layers=2, dropout=p, dropout_mode="locked",
                     rngs=nnx.Rngs(params=0, dropout=1))
    ones = jnp.ones((64, T, H))
    out = np.asarray(stack.dropout(ones))
    assert np.all(out == out[:, :1, :])  # constant over time
    assert five_sigma(np.mean(out[:, 0] == 0), p, 64 * H)
    assert not np.array_equal(out[0, 0], out[1, 0])  # differs across sequences
    std = make_rnn("gru", E, H, num_layers=2, dropout=p, rngs=nnx.Rngs(params=0, dropout=1))
    assert not np.all(np.asarray(std.dropout(ones)) == np.asarray(std.dropout(ones))[:, :1])


@pytest.mark.parametrize("reg", [{"weight_drop": 0.4}, {"zoneout": 0.3}],
                         ids=["weight_drop", "zoneout"])
@pytest.mark.parametrize("name", ["lstm", "gru", "lstmp"])
def test_gradients_with_a_fixed_mask_match_float64_finite_differences(name, reg, x64):
    cell, _ = pair(name, dtype=jnp.float64, **reg)
    layer = Recurrent(cell)
    x = x_in(1, np.float64)
    wy = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, cell.output_features)))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params):
        # The rng state in `rest` is fixed, and with it the masks: each call merges a copy,
        # since a call advances the rng count of the module it runs.
        return jnp.sum(nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))(x) * wy)

    assert float(loss(params)) == float(loss(params))
    g = jax.grad(loss)(params)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(3)
    for k, (leaf, gk) in enumerate(zip(leaves, jax.tree.leaves(g), strict=True)):
        d = jnp.asarray(rng.normal(size=leaf.shape))
        shift = lambda s, d=d, k=k: jax.tree.unflatten(  # noqa: E731
            tree, [a + s * d if i == k else a for i, a in enumerate(leaves)])
        fd = (loss(shift(1e-6)) - loss(shift(-1e-6))) / 2e-6
        np.testing.assert_allclose(float(jnp.sum(gk * d)), float(fd), rtol=1e-6, atol=1e-7)


def test_rates_are_checked_and_need_rngs():
    with pytest.raises(ValueError, match=r"zoneout must be in \[0, 1\)"):
        make_cell("lstm", E, H, rngs=nnx.Rngs(0), zoneout=1.0)
    with pytest.raises(ValueError, match="impl='fused' cannot apply: zoneout"):
        make_cell("gru", E, H, rngs=nnx.Rngs(0), zoneout=0.1, impl="fused")
    assert isinstance(make_rnn("lstm", E, H, rngs=nnx.Rngs(0), weight_drop=0.2),
                      StackedRecurrent)
