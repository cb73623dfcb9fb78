"""Values of rnnjax's cells and layers against independent references (no torch needed).

References used here: a numpy implementation of each cell written from the papers'
formulas (unfolded biases, per-row Python loops over each row's valid steps, so it
shares no code path with the masked scan), the cell's own step form in a Python loop,
and float64 central finite differences for gradients. Also covered: initialisation
(forget bias, per-gate orthogonality), bfloat16 compute, learnable initial carries,
dropout between stacked layers, the ``sum`` merge, and the ValueErrors for bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.nn import (
    Bidirectional,
    ElmanCell,
    LSTMState,
    Recurrent,
    StackedRecurrent,
    lengths_to_mask,
    make_cell,
    make_rnn,
    masked_scan,
)

B, T, E, H = 3, 5, 3, 4
LENGTHS = np.array([5, 1, 3])
# (config name, extra cell kwargs); GRU twice: cuDNN form and Cho et al. 2014 form.
CELL_CASES = [
    pytest.param("lstm", {}, id="lstm"),
    pytest.param("gru", {}, id="gru"),
    pytest.param("gru", {"reset_before": True}, id="gru_reset_before"),
    pytest.param("rnn_tanh", {}, id="rnn_tanh"),
    pytest.param("rnn_relu", {}, id="rnn_relu"),
]
PARAM_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")
# LSTM and GRU layers may dispatch to a faster scan of their own (cell.scan_projected);
# "plain" runs the shared masked_scan over the step form instead, so both are checked.
GRADIENT_CASES = [pytest.param(*c.values, "layer", id=c.id) for c in CELL_CASES] + [
    pytest.param("lstm", {}, "plain", id="lstm_plain"),
    pytest.param("gru", {}, "plain", id="gru_plain"),
]


# -- helpers -------------------------------------------------------------------------
def build_cell(kind, kw, seed=0, **extra):
    """A cell with random (non-zero) biases, so bias placement is tested too."""
    cell = make_cell(kind, E, H, rngs=nnx.Rngs(seed), **kw, **extra)
    rng = np.random.default_rng(seed + 100)
    for name in ("b_ih", "b_hh"):
        p = getattr(cell, name)
        p[...] = jnp.asarray(rng.normal(scale=0.5, size=p[...].shape), p[...].dtype)
    return cell


def np_params(cell) -> dict[str, np.ndarray]:
    return {n: np.asarray(getattr(cell, n)[...], np.float64) for n in PARAM_NAMES}


def random_carry(kind, rng, batch=B):
    if kind == "lstm":
        return LSTMState(*(jnp.asarray(rng.normal(size=(batch, H)), jnp.float32)
                           for _ in range(2)))
    return jnp.asarray(rng.normal(size=(batch, H)), jnp.float32)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_step(kind, reset_before, p, carry, x):
    """One step for one row, straight from the formulas; biases kept separate."""
    if kind in ("rnn_tanh", "rnn_relu"):
        a = x @ p["w_ih"] + p["b_ih"] + carry @ p["w_hh"] + p["b_hh"]
        h = np.tanh(a) if kind == "rnn_tanh" else np.maximum(a, 0.0)
        return h, h
    if kind == "lstm":
        h, c = carry
        i, f, g, o = np.split(x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"], 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return (h, c), h
    # GRU, gates r, z, n.
    h = carry
    w_ir, w_iz, w_in = np.split(p["w_ih"], 3, axis=1)
    w_hr, w_hz, w_hn = np.split(p["w_hh"], 3, axis=1)
    b_ir, b_iz, b_in = np.split(p["b_ih"], 3)
    b_hr, b_hz, b_hn = np.split(p["b_hh"], 3)
    r = _sigmoid(x @ w_ir + b_ir + h @ w_hr + b_hr)
    z = _sigmoid(x @ w_iz + b_iz + h @ w_hz + b_hz)
    if reset_before:  # Cho et al. 2014, eq. 8: the reset gate scales h before W_hn.
        n = np.tanh(x @ w_in + b_in + (r * h) @ w_hn + b_hn)
    else:  # cuDNN / PyTorch: the reset gate scales W_hn h + b_hn.
        n = np.tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))
    h = (1.0 - z) * n + z * h
    return h, h


def np_run(kind, reset_before, p, x, lengths, reverse, carry0):
    """Per-row loop over each row's valid prefix: ``(final_carries, y)``; y zero-padded."""
    x = np.asarray(x, np.float64)
    y = np.zeros((x.shape[0], x.shape[1], H))
    finals = []
    for b in range(x.shape[0]):
        carry = jax.tree.map(lambda a, b=b: np.asarray(a[b], np.float64), carry0)
        if kind == "lstm":
            carry = (carry.h, carry.c)
        steps = range(lengths[b])
        for t in reversed(steps) if reverse else steps:
            carry, y[b, t] = np_step(kind, reset_before, p, carry, x[b, t])
        finals.append(carry)
    if kind == "lstm":
        return LSTMState(np.stack([f[0] for f in finals]), np.stack([f[1] for f in finals])), y
    return np.stack(finals), y


def plain_scan(cell, x, lengths, reverse, carry0):
    """The cell's step form under the shared :func:`masked_scan`: ``(carry, y (B, T, H))``."""
    xp = cell.project_inputs(jnp.swapaxes(x, 0, 1))  # (T, B, G*H)
    mask = lengths_to_mask(lengths, x.shape[1]).T  # (T, B)
    carry, ys = masked_scan(cell.step_projected, carry0, xp, mask, reverse=reverse)
    return carry, jnp.swapaxes(ys, 0, 1)


def assert_tree_close(a, b, atol, rtol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64),
                                   atol=atol, rtol=rtol)


# -- the cells' formulas -------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind,kw", CELL_CASES)
def test_layer_matches_numpy_reference_with_ragged_lengths(kind, kw, reverse):
    cell = build_cell(kind, kw)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    carry0 = random_carry(kind, rng)
    carry, y = Recurrent(cell, reverse=reverse, return_carry=True)(
        jnp.asarray(x), seq_lengths=LENGTHS, initial_carry=carry0)
    ref_carry, ref_y = np_run(kind, kw.get("reset_before", False), np_params(cell), x, LENGTHS,
                              reverse, carry0)
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=1e-5, rtol=0)
    assert_tree_close(carry, ref_carry, atol=1e-5)
    plain_carry, plain_y = plain_scan(cell, jnp.asarray(x), LENGTHS, reverse, carry0)
    np.testing.assert_allclose(np.asarray(plain_y), ref_y, atol=1e-5, rtol=0)
    assert_tree_close(plain_carry, ref_carry, atol=1e-5)


def test_gru_reset_before_is_cho_2014_and_differs_from_cudnn():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, E)).astype(np.float32)
    h = rng.normal(size=(B, H)).astype(np.float32)
    cho = build_cell("gru", {"reset_before": True}, seed=3)
    cudnn = build_cell("gru", {"reset_before": False}, seed=3)  # same weights
    p = np_params(cho)
    ref_cho = np.stack([np_step("gru", True, p, h[b], x[b])[1] for b in range(B)])
    ref_cudnn = np.stack([np_step("gru", False, p, h[b], x[b])[1] for b in range(B)])
    _, y_cho = cho(jnp.asarray(h), jnp.asarray(x))
    _, y_cudnn = cudnn(jnp.asarray(h), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y_cho), ref_cho, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(y_cudnn), ref_cudnn, atol=1e-6, rtol=0)
    # The two forms must really differ here, or the test above could not tell them apart.
    assert np.max(np.abs(ref_cho - ref_cudnn)) > 1e-3


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind,kw", CELL_CASES)
def test_step_form_equals_hoisted_form(kind, kw, reverse):
    cell = build_cell(kind, kw)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    carry0 = random_carry(kind, rng)
    carry, ys = carry0, [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        carry, ys[t] = cell(carry, x[:, t])
    layer_carry, y = Recurrent(cell, reverse=reverse, return_carry=True)(x, initial_carry=carry0)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.stack(ys, axis=1)), atol=1e-6,
                               rtol=0)
    assert_tree_close(layer_carry, carry, atol=1e-6)


def test_time_major_with_mask_equals_batch_major_with_lengths():
    cell = build_cell("lstm", {})
    x = jnp.asarray(np.random.default_rng(5).normal(size=(B, T, E)), jnp.float32)
    mask_bt = np.arange(T)[None, :] < LENGTHS[:, None]
    c_bm, y_bm = Recurrent(cell, reverse=True, return_carry=True)(x, seq_lengths=LENGTHS)
    c_tm, y_tm = Recurrent(cell, reverse=True, time_major=True, return_carry=True)(
        jnp.swapaxes(x, 0, 1), mask=mask_bt.T)
    np.testing.assert_array_equal(np.asarray(jnp.swapaxes(y_tm, 0, 1)), np.asarray(y_bm))
    assert_tree_close(c_tm, c_bm, atol=0.0)


# -- gradients against float64 finite differences ------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind,kw,path", GRADIENT_CASES)
def test_gradients_match_float64_finite_differences(x64, kind, kw, path, reverse):
    cell = build_cell(kind, kw, seed=6, param_dtype=jnp.float64, dtype=jnp.float64)
    layer = Recurrent(cell, reverse=reverse, return_carry=True)
    graphdef, params = nnx.split(layer)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(B, T, E)))
    carry0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), random_carry(kind, rng))
    r_y = jnp.asarray(rng.normal(size=(B, T, H)))
    r_c = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), carry0)

    @jax.jit
    def loss(params, x, carry0):
        model = nnx.merge(graphdef, params)
        if path == "plain":
            carry, y = plain_scan(model.cell, x, LENGTHS, reverse, carry0)
        else:
            carry, y = model(x, seq_lengths=LENGTHS, initial_carry=carry0)
        dots = jax.tree.map(lambda c, r: jnp.sum(c * r), carry, r_c)
        return jnp.sum(y * r_y) + sum(jax.tree.leaves(dots))

    primal = (params, x, carry0)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*primal)
    eps = 1e-6
    leaves, treedef = jax.tree.flatten(primal)
    # One direction over everything, then one per leaf (each weight, bias, the inputs and
    # the initial carry alone), so a small wrong gradient cannot hide behind a large one.
    for k in range(-1, len(leaves)):
        keys = jax.random.split(jax.random.key(k + 1), len(leaves))
        v = jax.tree.unflatten(treedef, [
            jax.random.normal(key, a.shape, jnp.float64) if k in (-1, i) else jnp.zeros_like(a)
            for i, (key, a) in enumerate(zip(keys, leaves))
        ])
        analytic = sum(jax.tree.leaves(jax.tree.map(lambda g, d: jnp.sum(g * d), grads, v)))
        plus = loss(*jax.tree.map(lambda a, d: a + eps * d, primal, v))
        minus = loss(*jax.tree.map(lambda a, d: a - eps * d, primal, v))
        numeric = (plus - minus) / (2 * eps)
        assert abs(float(analytic)) > 1e-3  # a non-trivial direction
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=0)


# -- initialisation and dtypes -------------------------------------------------------
def test_lstm_forget_bias_initialised_in_b_hh_forget_slice():
    cell = make_cell("lstm", E, H, rngs=nnx.Rngs(0))
    b_hh, b_ih = np.asarray(cell.b_hh[...]), np.asarray(cell.b_ih[...])
    expected = np.zeros(4 * H)
    expected[H:2 * H] = 1.0  # gate order i, f, g, o
    np.testing.assert_array_equal(b_hh, expected)
    np.testing.assert_array_equal(b_ih, np.zeros(4 * H))
    custom = make_cell("lstm", E, H, rngs=nnx.Rngs(0), forget_bias=0.25)
    expected[H:2 * H] = 0.25
    np.testing.assert_array_equal(np.asarray(custom.b_hh[...]), expected)


@pytest.mark.parametrize("kind,gates", [("lstm", 4), ("gru", 3), ("rnn_tanh", 1)])
def test_recurrent_kernel_is_orthogonal_per_gate(kind, gates):
    w_hh = np.asarray(make_cell(kind, E, H, rngs=nnx.Rngs(0)).w_hh[...], np.float64)
    assert w_hh.shape == (H, gates * H)
    blocks = np.split(w_hh, gates, axis=1)
    for block in blocks:
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    for a, b in zip(blocks, blocks[1:]):  # each gate gets its own random block
        assert not np.allclose(a, b)


@pytest.mark.parametrize("kind,kw", CELL_CASES)
def test_bfloat16_compute_stays_close_to_float32(kind, kw):
    x = jnp.asarray(np.random.default_rng(8).normal(size=(B, T, E)), jnp.float32)
    y32 = Recurrent(build_cell(kind, kw))(x, seq_lengths=LENGTHS)
    cell16 = build_cell(kind, kw, dtype=jnp.bfloat16)  # same float32 parameters
    assert cell16.w_hh[...].dtype == jnp.float32
    y16 = Recurrent(cell16)(x, seq_lengths=LENGTHS)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=6e-2, rtol=0)


# -- learnable initial carry ---------------------------------------------------------
LEARN_CASES = ["lstm", "gru", "rnn_tanh"]


@pytest.mark.parametrize("kind", LEARN_CASES)
def test_learned_initial_carry_is_a_parameter_with_the_right_gradient(kind):
    cell = build_cell(kind, {})
    learned = Recurrent(cell, learn_initial_carry=True, return_carry=True)
    plain = Recurrent(cell, return_carry=True)
    rng = np.random.default_rng(9)
    value = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                         learned.initial_carry.get_value())
    assert all(leaf.shape == (H,) for leaf in jax.tree.leaves(value))
    learned.initial_carry.set_value(value)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    broadcast = jax.tree.map(lambda v: jnp.broadcast_to(v, (B, H)), value)

    def loss(model, init=None):
        carry, y = model(x, seq_lengths=LENGTHS, initial_carry=init)
        return jnp.sum(y ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    # Value: the learned carry acts as the given carry broadcast over the batch.
    np.testing.assert_allclose(loss(learned), loss(plain, broadcast), rtol=1e-6)
    # Gradient: d/d(shared carry) is the batch sum of d/d(per-row carry).
    g_learned = nnx.grad(loss)(learned).initial_carry.get_value()
    g_rows = jax.grad(lambda c: loss(plain, c))(broadcast)
    assert_tree_close(g_learned, jax.tree.map(lambda g: g.sum(0), g_rows), atol=1e-5)
    assert all(np.abs(np.asarray(g)).max() > 1e-3 for g in jax.tree.leaves(g_learned))


# -- stacking, dropout, merges -------------------------------------------------------
def test_stacked_dropout_is_train_only_and_never_after_the_last_layer():
    x = jnp.asarray(np.random.default_rng(10).normal(size=(B, T, E)), jnp.float32)
    one = make_rnn("gru", E, H, num_layers=1, dropout=0.9, rngs=nnx.Rngs(0, dropout=1))
    train_out = one(x, seq_lengths=LENGTHS)
    one.eval()
    np.testing.assert_array_equal(np.asarray(train_out), np.asarray(one(x, seq_lengths=LENGTHS)))

    two = make_rnn("gru", E, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    no_dropout = two.layers[1](two.layers[0](x, seq_lengths=LENGTHS), seq_lengths=LENGTHS)
    train_a, train_b = two(x, seq_lengths=LENGTHS), two(x, seq_lengths=LENGTHS)
    two.eval()
    eval_out = two(x, seq_lengths=LENGTHS)
    np.testing.assert_array_equal(np.asarray(eval_out), np.asarray(no_dropout))
    assert np.max(np.abs(np.asarray(train_a - eval_out))) > 1e-2
    assert np.max(np.abs(np.asarray(train_a - train_b))) > 1e-2  # fresh masks each call
    two.train()
    assert np.max(np.abs(np.asarray(two(x, seq_lengths=LENGTHS) - eval_out))) > 1e-2


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_bidirectional_merge_matches_numpy_reference(merge):
    fwd, bwd = build_cell("lstm", {}, seed=11), build_cell("lstm", {}, seed=12)
    bi = Bidirectional(Recurrent(fwd), Recurrent(bwd, reverse=True), merge=merge,
                       return_carry=True)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    (cf, cb), y = bi(jnp.asarray(x), seq_lengths=LENGTHS)
    zeros = LSTMState(np.zeros((B, H)), np.zeros((B, H)))
    ref_cf, ref_yf = np_run("lstm", False, np_params(fwd), x, LENGTHS, False, zeros)
    ref_cb, ref_yb = np_run("lstm", False, np_params(bwd), x, LENGTHS, True, zeros)
    ref_y = ref_yf + ref_yb if merge == "sum" else np.concatenate([ref_yf, ref_yb], axis=-1)
    assert bi.output_features == (H if merge == "sum" else 2 * H)
    np.testing.assert_allclose(np.asarray(y), ref_y, atol=1e-5, rtol=0)
    assert_tree_close((cf, cb), (ref_cf, ref_cb), atol=1e-5)


def test_stacked_initial_carry_per_layer_and_direction():
    stack = make_rnn("lstm", E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(14)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    init = [(random_carry("lstm", rng), random_carry("lstm", rng)) for _ in range(2)]
    carries, y = stack(x, seq_lengths=LENGTHS, initial_carry=init, return_carry=True)
    # By hand: layer by layer, direction by direction.
    h = x
    for k, layer in enumerate(stack.layers):
        cf, yf = layer.forward(h, seq_lengths=LENGTHS, initial_carry=init[k][0],
                               return_carry=True)
        cb, yb = layer.backward(h, seq_lengths=LENGTHS, initial_carry=init[k][1],
                                return_carry=True)
        assert_tree_close(carries[k], (cf, cb), atol=0.0)
        h = jnp.concatenate([yf, yb], axis=-1)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(h))
    # A given carry must matter (zeros give something else).
    assert np.max(np.abs(np.asarray(stack(x, seq_lengths=LENGTHS) - y))) > 1e-3


# -- bad input -----------------------------------------------------------------------
@pytest.fixture
def lstm_layer():
    return Recurrent(build_cell("lstm", {}))


def _x(t=T, e=E):
    return jnp.zeros((B, t, e), jnp.float32)


@pytest.mark.parametrize("lengths", [[5, 6, 1], [5, 0, 3], [-1, 2, 3]])
def test_lengths_outside_one_to_t_raise(lstm_layer, lengths):
    with pytest.raises(ValueError, match=r"sequence length must be in \[1, T=5\]"):
        lstm_layer(_x(), seq_lengths=np.array(lengths))


def test_lengths_wrong_shape_or_dtype_raise(lstm_layer):
    with pytest.raises(ValueError, match=r"seq_lengths must have shape \(B,\) = \(3,\)"):
        lstm_layer(_x(), seq_lengths=np.array([5, 5]))
    with pytest.raises(ValueError, match="seq_lengths must be integers"):
        lstm_layer(_x(), seq_lengths=np.array([5.0, 5.0, 5.0]))


def test_wrong_feature_size_raises(lstm_layer):
    with pytest.raises(ValueError, match=r"inputs have 2 features .* expects E=3"):
        lstm_layer(_x(e=2))
    with pytest.raises(ValueError, match=r"expects inputs with 3 features"):
        lstm_layer.cell(lstm_layer.cell.initialize_carry(B), jnp.zeros((B, 2)))


def test_inputs_not_three_dimensional_raise(lstm_layer):
    with pytest.raises(ValueError, match=r"inputs must be \(B, T, E\)"):
        lstm_layer(jnp.zeros((T, E)))


def test_mask_shape_mismatch_raises(lstm_layer):
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(3, 5\)"):
        lstm_layer(_x(), mask=np.ones((T, B), bool))


def test_lengths_and_mask_together_raise(lstm_layer):
    with pytest.raises(ValueError, match="pass seq_lengths or mask, not both"):
        lstm_layer(_x(), seq_lengths=LENGTHS, mask=np.ones((B, T), bool))


def test_empty_sequence_raises(lstm_layer):
    with pytest.raises(ValueError, match=r"empty sequence \(T=0\)"):
        lstm_layer(_x(t=0))


def test_unknown_cell_name_raises_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown cell 'lsmt'; known cells: \[.*'lstm'"):
        make_cell("lsmt", E, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoid'"):
        ElmanCell(E, H, activation="sigmoid", rngs=nnx.Rngs(0))


def test_wrong_initial_carry_raises(lstm_layer):
    with pytest.raises(ValueError, match=r"initial_carry leaves must be \(B, H\) = \(3, 4\)"):
        lstm_layer(_x(), initial_carry=LSTMState(jnp.zeros((B, H + 1)), jnp.zeros((B, H + 1))))
    with pytest.raises(ValueError, match="initial_carry must have structure"):
        lstm_layer(_x(), initial_carry=jnp.zeros((B, H)))
    stack = make_rnn("gru", E, H, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"initial_carry needs 2 entries \(one per layer\)"):
        stack(_x(), initial_carry=[jnp.zeros((B, H))])
    bi = make_rnn("gru", E, H, bidirectional=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"pair \(forward_carry, backward_carry\)"):
        bi(_x(), initial_carry=[jnp.zeros((B, H))])


def test_bad_layer_configuration_raises():
    cell = build_cell("gru", {})
    with pytest.raises(ValueError, match="unknown merge 'mean'"):
        Bidirectional(Recurrent(cell), Recurrent(cell, reverse=True), merge="mean")
    with pytest.raises(ValueError, match="backward reverse=True"):
        Bidirectional(Recurrent(cell), Recurrent(cell))
    with pytest.raises(ValueError, match=r"layer 1 expects 3 input features but layer 0 outputs 4"):
        StackedRecurrent([Recurrent(cell), Recurrent(cell)])
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        make_rnn("gru", E, H, num_layers=2, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        make_rnn("gru", E, H, num_layers=0, rngs=nnx.Rngs(0))
