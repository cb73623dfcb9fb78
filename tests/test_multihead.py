"""Multi-head (block-diagonal) recurrence for the classic cells: ``num_heads`` on LSTM/GRU/Elman.

With N heads every gate's recurrent matrix is block-diagonal, so head i's next state
reads only head i's previous state. Checked against a float64 numpy LSTM/GRU whose
recurrent matrix is the cell's own masked one, and structurally: off-block weights get
no gradient, the fused and scan paths agree, and N = 1 is the classic cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.nn import make_cell, make_rnn
from rnnjax.nn.gated import head_mask

B, T, E, H, N = 3, 6, 5, 8, 4


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference(kind, cell, x):
    """Float64 numpy recurrence with the cell's (masked) weights; returns (T, B, H)."""
    w_ih = np.asarray(cell.w_ih[...], np.float64)
    w_hh = np.asarray(cell._p("w_hh"), np.float64)
    b_ih = np.asarray(cell.b_ih[...], np.float64)
    b_hh = np.asarray(cell.b_hh[...], np.float64)
    h = np.zeros((x.shape[0], H))
    c = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        xi = x[:, t] @ w_ih + b_ih
        hh = h @ w_hh + b_hh
        if kind == "lstm":
            g = xi + hh
            i, f, gg, o = (g[:, k * H:(k + 1) * H] for k in range(4))
            c = _np_sigmoid(f) * c + _np_sigmoid(i) * np.tanh(gg)
            h = _np_sigmoid(o) * np.tanh(c)
        else:
            r = _np_sigmoid(xi[:, :H] + hh[:, :H])
            z = _np_sigmoid(xi[:, H:2 * H] + hh[:, H:2 * H])
            n = np.tanh(xi[:, 2 * H:] + r * hh[:, 2 * H:])
            h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["fused", "scan"])
def test_multihead_matches_a_block_diagonal_reference(kind, impl):
    cell = make_cell(kind, E, H, rngs=nnx.Rngs(0), num_heads=N, impl=impl)
    w = np.asarray(cell._p("w_hh"))
    mask = np.asarray(head_mask(H, cell.num_gates, H, N))
    assert np.all(w[~mask] == 0) and np.all(np.abs(w[mask]) > 0)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (B, T, E)))
    layer = make_rnn(kind, E, H, rngs=nnx.Rngs(0), num_heads=N, impl=impl)
    y = np.asarray(layer(jnp.asarray(x, jnp.float32)))
    ref = _reference(kind, layer.layers[0].cell, x)
    np.testing.assert_allclose(y, ref.transpose(1, 0, 2), atol=2e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_heads_do_not_talk_and_off_block_weights_get_no_gradient(kind):
    layer = make_rnn(kind, E, H, rngs=nnx.Rngs(0), num_heads=N)
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jax.random.normal(jax.random.PRNGKey(2), (B, T, E))

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(x) ** 2)

    grads = jax.grad(loss)(params)
    g = np.asarray(grads["layers"][0]["cell"]["w_hh"][...])
    mask = np.asarray(head_mask(H, 4 if kind == "lstm" else 3, H, N))
    assert np.all(g[~mask] == 0) and np.any(g[mask] != 0)

    # Perturbing head 0's carry changes head 0's next state only (through w_hh).
    cell = layer.layers[0].cell
    carry = cell.initialize_carry(B)
    bump = jnp.zeros((B, H)).at[:, : H // N].set(1.0)
    bumped = carry._replace(h=carry.h + bump) if kind == "lstm" else carry + bump
    xt = jnp.zeros((B, E))
    h0 = cell(carry, xt)[1]
    h1 = cell(bumped, xt)[1]
    changed = np.any(np.abs(np.asarray(h1 - h0)) > 1e-7, axis=0)
    assert changed[: H // N].all() and not changed[H // N:].any()


def test_one_head_is_the_classic_cell():
    a = make_cell("lstm", E, H, rngs=nnx.Rngs(0))
    b = make_cell("lstm", E, H, rngs=nnx.Rngs(0), num_heads=1)
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        assert np.array_equal(np.asarray(getattr(a, name)[...]),
                              np.asarray(getattr(b, name)[...]))


def test_num_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="num_heads=3 must be >= 1 and divide"):
        make_cell("gru", E, H, rngs=nnx.Rngs(0), num_heads=3)


def test_num_heads_from_a_config(tmp_path):
    from _helpers import config, train

    cfg = config("adding.py:smoke,T=6", "model.cell_kwargs.num_heads=4")
    out = train(cfg, tmp_path)
    assert np.isfinite(out["mse"])
