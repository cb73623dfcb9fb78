"""The fused LSTM/GRU loops (rnnjax.nn.lstm, rnnjax.nn.gru) against the plain masked scan.

References: the cell's own step form under :func:`rnnjax.nn.scan.masked_scan` and
``jax.grad`` of it (a different code path: autodiff of a generic scan, no hand-written
backward), float64 central finite differences, and ``jnp.tanh`` for the
``2*sigmoid(2x) - 1`` identity. Also checked: that float32 LSTM/GRU layers really
dispatch to the fused loops and other configurations (and ``impl="scan"``) do not,
``impl="scan"`` for forward-mode autodiff, ``impl="fused"`` where it cannot apply, and the
ValueErrors for bad shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.nn import GRUCell, LSTMCell, LSTMState, Recurrent, fused, make_rnn, masked_scan
from rnnjax.nn.gru import gru_scan
from rnnjax.nn.lstm import lstm_scan

T, B, E, H = 6, 4, 3, 5
# Ragged, and not only right padding: rows with holes, a row masked at t=0 and one
# fully valid, so carry pass-through is exercised in the middle of a sequence too.
MASK = np.array([
    [1, 1, 1, 0, 1, 1],
    [1, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 0, 1],
    [1, 1, 1, 1, 1, 1],
], bool).T  # (T, B)
MASK_CASES = [pytest.param(None, id="nomask"), pytest.param(MASK, id="ragged")]
DIR_CASES = [pytest.param(False, id="fwd"), pytest.param(True, id="rev")]


def make(kind, seed=0, **kw):
    Cell = LSTMCell if kind == "lstm" else GRUCell
    cell = Cell(E, H, rngs=nnx.Rngs(seed), **kw)
    rng = np.random.default_rng(seed + 1)
    for name in ("b_ih", "b_hh"):  # non-zero biases, so b_hn placement is tested
        p = getattr(cell, name)
        p[...] = jnp.asarray(rng.normal(scale=0.5, size=p[...].shape), p[...].dtype)
    return cell


def random_inputs(kind, cell, seed=2, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(T, B, E)), dtype)
    carry = cell.initialize_carry(B, dtype)
    carry = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), dtype), carry)
    w_y = jnp.asarray(rng.normal(size=(T, B, H)), dtype)
    return x, carry, w_y


def run(kind, cell, fn, w_hh, xp, carry, mask, reverse, lanes=None):
    """``fn='fused'`` calls the fused loop directly; ``'plain'`` the masked scan."""
    m = None if mask is None else jnp.asarray(mask)
    if fn == "plain":
        gd, st = nnx.split(cell)
        st["w_hh"] = st["w_hh"].replace(w_hh)
        step = nnx.merge(gd, st).step_projected
        return masked_scan(step, carry, xp, m, reverse=reverse)
    if kind == "lstm":
        return lstm_scan(w_hh, xp, carry, m, reverse=reverse, lanes=lanes)
    b_hn = cell.b_hh[...][2 * H:]
    return gru_scan(w_hh, b_hn, xp, carry, m, reverse=reverse, lanes=lanes)


def loss_fn(kind, cell, fn, mask, reverse, w_y, lanes=None):
    def loss(w_hh, xp, carry):
        c, ys = run(kind, cell, fn, w_hh, xp, carry, mask, reverse, lanes)
        # Weights on every output and on the final carry, so each cotangent path counts.
        return jnp.sum(ys * w_y) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(c))

    return loss


@pytest.mark.parametrize("reverse", DIR_CASES)
@pytest.mark.parametrize("mask", MASK_CASES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fused_matches_plain_scan_values_and_gradients(kind, mask, reverse):
    cell = make(kind)
    x, carry, w_y = random_inputs(kind, cell)
    xp = cell.project_inputs(x)
    w_hh = cell.w_hh[...]
    c_f, y_f = jax.jit(lambda *a: run(kind, cell, "fused", *a, mask, reverse))(w_hh, xp, carry)
    # Jitted too: one program, not every op compiled eagerly (docs/performance.md §15).
    c_p, y_p = jax.jit(lambda *a: run(kind, cell, "plain", *a, mask, reverse))(w_hh, xp, carry)
    np.testing.assert_allclose(np.asarray(y_f), np.asarray(y_p), atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(c_f), jax.tree.leaves(c_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    if mask is not None:  # masked outputs are exactly zero
        assert np.all(np.asarray(y_f)[~mask] == 0)
    if kind == "lstm":
        assert isinstance(c_f, LSTMState)

    args = (w_hh, xp, carry)
    g_f = jax.jit(jax.grad(loss_fn(kind, cell, "fused", mask, reverse, w_y), (0, 1, 2)))(*args)
    g_p = jax.jit(jax.grad(loss_fn(kind, cell, "plain", mask, reverse, w_y), (0, 1, 2)))(*args)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_p)):
        assert np.max(np.abs(np.asarray(b))) > 1e-3  # a gradient that is really there
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    if mask is not None:  # no gradient reaches the projected inputs of masked steps
        assert np.all(np.asarray(g_f[1])[~mask] == 0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fused_gradients_match_float64_finite_differences(x64, kind):
    cell = make(kind, seed=3, param_dtype=jnp.float64)
    x, carry, w_y = random_inputs(kind, cell, seed=4, dtype=jnp.float64)
    primal = (cell.w_hh[...], cell.project_inputs(x), carry)
    loss = jax.jit(loss_fn(kind, cell, "fused", MASK, True, w_y))
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(*primal)
    leaves, treedef = jax.tree.flatten(primal)
    for k, key in enumerate(jax.random.split(jax.random.key(5), len(leaves))):
        # One leaf at a time, so a small wrong gradient cannot hide behind a large one.
        v = jax.tree.unflatten(treedef, [
            jax.random.normal(key, a.shape, jnp.float64) if i == k else jnp.zeros_like(a)
            for i, a in enumerate(leaves)])
        analytic = sum(jax.tree.leaves(jax.tree.map(lambda g, d: jnp.sum(g * d), grads, v)))
        eps = 1e-6
        plus = loss(*jax.tree.map(lambda a, d, e=eps: a + e * d, primal, v))
        minus = loss(*jax.tree.map(lambda a, d, e=eps: a - e * d, primal, v))
        numeric = (plus - minus) / (2 * eps)
        assert abs(float(analytic)) > 1e-3
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=1e-8)


def _uses_fused(layer, x) -> bool:
    """Whether the layer's time loop is a fused custom-VJP loop (only the loop is traced:
    the input projection, also a custom VJP, is computed outside)."""
    cell = layer.cell
    xp = cell.project_inputs(jnp.swapaxes(x, 0, 1))
    carry = cell.initialize_carry(x.shape[0], xp.dtype)
    jaxpr = jax.make_jaxpr(lambda xp, c: cell.scan_projected(c, xp))(xp, carry)
    return "custom_vjp_call" in str(jaxpr)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layers_dispatch_to_fused_and_agree_with_plain_path(kind):
    cell = make(kind, seed=6)
    layer = Recurrent(cell, reverse=True, return_carry=True)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(B, T, E)), jnp.float32)
    lengths = jnp.asarray([6, 1, 4, 3])
    assert _uses_fused(layer, x)
    graphdef, params = nnx.split(layer)

    def loss(params):
        c, y = nnx.merge(graphdef, params)(x, seq_lengths=lengths)
        return jnp.sum(y ** 2) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(c))

    l_f, g_f = jax.jit(jax.value_and_grad(loss))(params)  # one program (§15)
    scan_layer = Recurrent(make(kind, seed=6, impl="scan"), reverse=True, return_carry=True)
    assert not _uses_fused(scan_layer, x)
    scan_def, scan_params = nnx.split(scan_layer)
    assert scan_def != graphdef  # impl is part of the cell's static structure
    for a, b in zip(jax.tree.leaves(scan_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same weights
    graphdef = scan_def
    l_p, g_p = jax.jit(jax.value_and_grad(loss))(scan_params)
    np.testing.assert_allclose(float(l_f), float(l_p), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,kw", [
    pytest.param("lstm", {"dtype": jnp.bfloat16}, id="lstm_bf16"),
    pytest.param("gru", {"dtype": jnp.bfloat16}, id="gru_bf16"),
    pytest.param("gru", {"reset_before": True}, id="gru_reset_before"),
])
def test_other_configurations_use_the_plain_scan(kind, kw):
    layer = Recurrent(make(kind, **kw))
    x = jnp.ones((B, T, E), jnp.float32)
    assert not _uses_fused(layer, x)


def test_impl_scan_allows_forward_mode_autodiff():
    cell = make("lstm", seed=8)
    scan_cell = make("lstm", seed=8, impl="scan")
    x, carry, _ = random_inputs("lstm", cell, seed=9)
    w_hh, xp = cell.w_hh[...], cell.project_inputs(x)

    def f(cell):
        return lambda w: cell.scan_projected(carry, xp + jnp.sum(w) * 0.1, jnp.asarray(MASK))[1]

    with pytest.raises(TypeError):  # a custom VJP has no JVP rule
        jax.jacfwd(f(cell))(w_hh)
    fwd = jax.jit(jax.jacfwd(f(scan_cell)))(w_hh)  # jitted: one program each (§15)
    rev = jax.jit(jax.jacrev(f(cell)))(w_hh)  # through the fused backward
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(rev), atol=1e-5, rtol=0)


def test_one_sigmoid_tanh_identity_is_accurate_in_float32():
    # The LSTM's g gate is 2*sigmoid(2x) - 1 instead of tanh(x): an absolute error of a
    # few float32 ulps of 1 (3 measured on XLA:CPU), well inside the 1e-6 promised.
    x = jnp.linspace(-20.0, 20.0, 200_001, dtype=jnp.float32)
    err = jnp.abs(2 * jax.nn.sigmoid(2 * x) - 1 - jnp.tanh(x))
    assert float(jnp.max(err)) < 5e-7


def test_project_matches_matmul_plus_bias_in_values_and_gradients():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(T, B, E)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(E, 4 * H)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4 * H,)), jnp.float32)
    r = jnp.asarray(rng.normal(size=(T, B, 4 * H)), jnp.float32)
    np.testing.assert_allclose(np.asarray(fused.project(x, w, b)), np.asarray(x @ w + b),
                               atol=1e-5, rtol=0)

    def loss(f):
        return lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)) * r)

    g_f = jax.jit(jax.grad(loss(fused.project), (0, 1, 2)))(x, w, b)
    g_p = jax.jit(jax.grad(loss(lambda x, w, b: x @ w + b), (0, 1, 2)))(x, w, b)
    for a, c in zip(g_f, g_p):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-4, rtol=1e-5)


def test_lanes_give_the_same_numbers():
    # Row blocks of the batch run as independent chains in the loop body.
    for kind in ("lstm", "gru"):
        cell = make(kind, seed=11, lanes=2)
        assert cell.lanes == 2
        x, carry, w_y = random_inputs(kind, cell, seed=12)
        args = (cell.w_hh[...], cell.project_inputs(x), carry)
        loss = loss_fn(kind, cell, "fused", MASK, False, w_y, lanes=cell.lanes)
        l_f, g_f = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(*args)
        l_p, g_p = jax.jit(jax.value_and_grad(loss_fn(kind, cell, "plain", MASK, False, w_y),
                                              (0, 1, 2)))(*args)
        np.testing.assert_allclose(float(l_f), float(l_p), rtol=1e-6)
        for a, c in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_p)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-5, rtol=0)


def test_lanes_are_used_only_for_big_steps_on_cpu():
    # The rule as measured by scripts/bench_lanes.py (docs/performance.md §8).
    if jax.default_backend() != "cpu":
        pytest.skip("the lane rule is for XLA:CPU")
    assert fused.lanes_for(64, 256, 4) == 2  # M: 17M multiply-adds a step
    assert fused.lanes_for(64, 256, 3) == 4
    assert fused.lanes_for(32, 128, 4) == 1  # S: 2.1M
    assert fused.lanes_for(16, 64, 4) == 1  # L
    assert fused.lanes_for(16, 256, 4) == 2  # 4.2M: blocks of 8 rows
    assert fused.lanes_for(32, 256, 3) == 4  # the char-LM GRU: blocks of 8 rows
    assert fused.lanes_for(16, 256, 3) == 4 and fused.lanes_for(64, 128, 3) == 1  # both 3.1M
    assert fused.lanes_for(128, 128, 3) == 4  # 6.3M
    assert fused.lanes_for(64, 512, 4) == 1 and fused.lanes_for(64, 512, 3) == 1  # H > 256
    assert fused.lanes_for(24, 1024, 4) == 1
    assert fused.lanes_for(12, 256, 3) == 2  # 4 blocks would hold 3 rows: 2 blocks of 6
    assert fused.lanes_for(6, 4, 4, lanes=3) == 3 and fused.lanes_for(5, 4, 4, lanes=3) == 1


def test_bad_shapes_raise_value_errors():
    w = jnp.zeros((H, 4 * H))
    xp = jnp.zeros((T, B, 4 * H))
    carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    with pytest.raises(ValueError, match="time-major"):
        lstm_scan(w, xp[0], carry)
    with pytest.raises(ValueError, match="4\\*H"):
        lstm_scan(w, jnp.zeros((T, B, 3 * H)), carry)
    with pytest.raises(ValueError, match="mask must be"):
        lstm_scan(w, xp, carry, jnp.ones((B, T), bool))
    with pytest.raises(ValueError, match="b_hn"):
        gru_scan(jnp.zeros((H, 3 * H)), jnp.zeros((H + 1,)), jnp.zeros((T, B, 3 * H)),
                 jnp.zeros((B, H)))


# -- impl: "auto" | "fused" | "scan", a cell argument a config can set -----------------
@pytest.mark.parametrize("reverse", DIR_CASES)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_impl_fused_and_scan_give_the_same_values_and_gradients(kind, reverse):
    x = jnp.asarray(np.random.default_rng(13).normal(size=(B, T, E)), jnp.float32)
    lengths = jnp.asarray([6, 1, 4, 3])  # ragged
    w_y = jnp.asarray(np.random.default_rng(14).normal(size=(B, T, H)), jnp.float32)
    out = {}
    for impl in ("fused", "scan"):
        layer = Recurrent(make(kind, seed=15, impl=impl), reverse=reverse, return_carry=True)
        assert _uses_fused(layer, x) == (impl == "fused")
        graphdef, params = nnx.split(layer)

        def loss(params, graphdef=graphdef):
            c, y = nnx.merge(graphdef, params)(x, seq_lengths=lengths)
            return jnp.sum(y * w_y) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(c))

        out[impl] = jax.jit(jax.value_and_grad(loss))(params)
    (l_f, g_f), (l_s, g_s) = out["fused"], out["scan"]
    np.testing.assert_allclose(float(l_f), float(l_s), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_s)):
        assert np.max(np.abs(np.asarray(b))) > 1e-3
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_make_rnn_impl_scan_takes_the_scan_path_and_matches_fused(kind):
    # What --config.model.cell_kwargs.impl=scan builds: make_rnn(..., impl="scan").
    x = jnp.asarray(np.random.default_rng(16).normal(size=(B, T, E)), jnp.float32)
    lengths = jnp.asarray([6, 2, 5, 3])
    fused_rnn = make_rnn(kind, E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(17))
    scan_rnn = make_rnn(kind, E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(17),
                        impl="scan")
    assert {layer.forward.cell.impl for layer in scan_rnn.layers} == {"scan"}
    assert {layer.forward.cell.impl for layer in fused_rnn.layers} == {"auto"}
    run = nnx.jit(lambda m, x, n: m(x, seq_lengths=n))  # one program per stack (§15)
    np.testing.assert_allclose(np.asarray(run(scan_rnn, x, lengths)),
                               np.asarray(run(fused_rnn, x, lengths)), atol=1e-6, rtol=0)
    v = jnp.asarray(np.random.default_rng(18).normal(size=x.shape), jnp.float32)
    # Forward mode goes through the scan path (and not through the fused one) ...
    y, dy = jax.jit(lambda x, v: jax.jvp(lambda x: scan_rnn(x, seq_lengths=lengths), (x,),
                                         (v,)))(x, v)
    with pytest.raises(TypeError):
        jax.jvp(lambda x: fused_rnn(x, seq_lengths=lengths), (x,), (v,))
    # ... and agrees with the fused path's reverse mode: <dy, u> = <v, J^T u>.
    u = jnp.asarray(np.random.default_rng(19).normal(size=y.shape), jnp.float32)
    vjp_u = jax.jit(lambda x, u: jax.vjp(lambda x: fused_rnn(x, seq_lengths=lengths), x)[1](u))
    np.testing.assert_allclose(float(jnp.sum(dy * u)), float(jnp.sum(vjp_u(x, u)[0] * v)),
                               rtol=1e-5)


def test_impl_fused_where_it_cannot_apply_is_a_clear_error():
    with pytest.raises(ValueError, match="impl='fused' cannot apply.*bfloat16.*impl='scan'"):
        LSTMCell(E, H, dtype=jnp.bfloat16, impl="fused", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="impl='fused' cannot apply.*bfloat16"):
        GRUCell(E, H, param_dtype=jnp.bfloat16, impl="fused", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="impl='fused' cannot apply.*reset_before=True"):
        GRUCell(E, H, reset_before=True, impl="fused", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError,
                       match=r"unknown impl 'cuda'; known: \['auto', 'fused', 'scan', .*\]; "
                             r"did you mean 'cudnn'\?"):
        make_rnn("lstm", E, H, impl="cuda", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="lanes must be"):
        LSTMCell(E, H, lanes=0, rngs=nnx.Rngs(0))
    # A float32 cell asked for "fused" and fed float64 state at trace time says so too.
    cell = LSTMCell(E, H, impl="fused", rngs=nnx.Rngs(0))
    xp = jnp.zeros((T, B, 4 * H), jnp.float32)
    with pytest.raises(ValueError, match="impl='fused' cannot apply.*one float32/float64 dtype"):
        jax.eval_shape(lambda: cell.scan_projected(cell.initialize_carry(B, jnp.float16), xp))
