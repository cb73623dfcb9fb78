"""The LSTM variants and IndRNN against float64 numpy transcriptions of their papers/haste.

* ``layernorm_lstm``: haste's LayerNormLSTM equations (Ba et al. 2016): LN of ``W x`` and
  of ``R h`` separately, each over its (4H,) vector with a gain, then the bias; LN of the
  cell state with gain and bias before the output tanh; haste's eps 1e-5, biased variance.
* ``layernorm_gru``: haste's LayerNormGRU: LN of ``W x`` and ``R h`` (3H each) with gains,
  biases after, reset gate on the recurrent candidate term.
* ``peephole_lstm``: Gers & Schmidhuber 2000, diagonal peepholes c_{t-1} -> i, f; c_t -> o.
* ``indrnn``: Li et al. 2018, ``h = act(W x + b + u ⊙ h)``, with ``|u| <= u_max`` clipped.

Each: the layer (sequence form, ragged lengths, given initial carry) equals the numpy loop;
the step form equals the sequence form; float64 finite differences check the gradients.
Parameters are random (gains, peepholes and ``u`` away from their initial values).

IndRNN on the adding problem (``configs/adding.py:T=1000,indrnn``): ``make_rnn``'s
``layer_kwargs`` reach each layer's cell (a one-layer stack run alone is the reference), the
config draws the authors' per-layer ``u`` ranges and trains (smoke); tests/test_reproduce.py
reruns the documented T=1000 reproduction (docs/cells/lstm_variants.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import config, results, train
from flax import nnx

from rnnjax.nn import Recurrent, make_cell, make_rnn
from rnnjax.tasks.base import get_task

B, T, E, H = 3, 5, 2, 4
LENGTHS = np.array([5, 2, 4])
TOL = 1e-12
EPS = 1e-5


def sig(v):
    return 1 / (1 + np.exp(-v))


def ln(v):
    m = v.mean(-1, keepdims=True)
    return (v - m) / np.sqrt(((v - m) ** 2).mean(-1, keepdims=True) + EPS)


def ref_layernorm_lstm(p, x_t, h, c):
    z = ln(x_t @ p["w_ih"]) * p["ln_x_gain"] + ln(h @ p["w_hh"]) * p["ln_h_gain"] \
        + p["b_ih"] + p["b_hh"]
    i, f, g, o = np.split(z, 4, axis=-1)  # rnnjax order; haste's is i, g, f, o
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(ln(c) * p["ln_c_gain"] + p["ln_c_bias"])
    return h, c


def ref_layernorm_gru(p, x_t, h, c):
    a = ln(x_t @ p["w_ih"]) * p["ln_x_gain"] + p["b_ih"]
    u = ln(h @ p["w_hh"]) * p["ln_h_gain"] + p["b_hh"]
    ar, az, an = np.split(a, 3, axis=-1)
    ur, uz, un = np.split(u, 3, axis=-1)
    r, z = sig(ar + ur), sig(az + uz)
    n = np.tanh(an + r * un)
    return (1 - z) * n + z * h, None


def ref_peephole_lstm(p, x_t, h, c):
    zi, zf, zg, zo = np.split(x_t @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"], 4, -1)
    i = sig(zi + p["p_i"] * c)
    f = sig(zf + p["p_f"] * c)
    c = f * c + i * np.tanh(zg)
    o = sig(zo + p["p_o"] * c)
    return o * np.tanh(c), c


U_MAX = 0.9


def ref_indrnn(act):
    def step(p, x_t, h, c):
        u = np.clip(p["u"], -U_MAX, U_MAX)
        return act(x_t @ p["w_ih"] + p["b_ih"] + u * h), None
    return step


CASES = {
    "layernorm_lstm": ({}, ref_layernorm_lstm, True),
    "layernorm_gru": ({}, ref_layernorm_gru, False),
    "peephole_lstm": ({}, ref_peephole_lstm, True),
    "indrnn-relu": ({"activation": "relu", "u_max": U_MAX}, ref_indrnn(lambda v: np.maximum(v, 0)),
                    False),
    "indrnn-identity-assoc": ({"activation": "identity", "u_max": U_MAX,
                               "scan_mode": "associative"}, ref_indrnn(lambda v: v), False),
    "indrnn-identity-seq": ({"activation": "identity", "u_max": U_MAX,
                             "scan_mode": "sequential"}, ref_indrnn(lambda v: v), False),
}


def build(case, seed=0):
    kw, ref, has_c = CASES[case]
    cell = make_cell(case.split("-")[0], E, H, rngs=nnx.Rngs(seed), param_dtype=jnp.float64,
                     impl="scan", **kw)
    rng = np.random.default_rng(seed + 10)
    # Every parameter random, so gains, peepholes and clipped u all matter.
    for path, var in nnx.to_flat_state(nnx.state(cell, nnx.Param)):
        name = path[-1]
        scale = 1.3 if name == "u" else 0.6
        var.set_value(jnp.asarray(rng.normal(size=var.shape) * scale
                                  + (1.0 if "gain" in name else 0.0)))
    params = {path[-1]: np.asarray(v.get_value())
              for path, v in nnx.to_flat_state(nnx.state(cell, nnx.Param))}
    return cell, params, ref, has_c


def run_ref(ref, p, x, h0, c0, lengths):
    ys = np.zeros((B, T, H))
    h_last, c_last = h0.copy(), None if c0 is None else c0.copy()
    for b in range(B):
        h, c = h0[b : b + 1], None if c0 is None else c0[b : b + 1]
        for t in range(lengths[b]):
            h, c = ref(p, x[b : b + 1, t], h, c)
            ys[b, t] = h[0]
        h_last[b] = h[0]
        if c is not None:
            c_last[b] = c[0]
    return ys, h_last, c_last


@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, x64):
    cell, p, ref, has_c = build(case)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, E))
    h0 = rng.normal(size=(B, H)) * 0.5
    c0 = rng.normal(size=(B, H)) * 0.5 if has_c else None
    init = cell.initialize_carry((B,), jnp.float64)
    init = type(init)(jnp.asarray(h0), jnp.asarray(c0)) if has_c else jnp.asarray(h0)
    # Jitted: one program, not every op compiled eagerly (docs/performance.md §15).
    run = nnx.jit(lambda m, x, n, c: m(x, seq_lengths=n, initial_carry=c))
    carry, y = run(Recurrent(cell, return_carry=True), jnp.asarray(x), LENGTHS, init)
    want_y, want_h, want_c = run_ref(ref, p, x, h0, c0, LENGTHS)
    err = np.abs(np.asarray(y) - want_y).max()
    h = carry.h if has_c else carry
    err = max(err, np.abs(np.asarray(h) - want_h).max())
    if has_c:
        err = max(err, np.abs(np.asarray(carry.c) - want_c).max())
    print(f"\n{case}: max |rnnjax - float64 reference| = {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_step_form_equals_sequence_form(case, x64):
    cell, _, _, _ = build(case)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, E)))
    carry, y = nnx.jit(lambda m, x: m(x))(Recurrent(cell, return_carry=True), x)  # §15
    step = nnx.jit(lambda cell, c, x_t: cell(c, x_t))
    c = cell.initialize_carry((B,), jnp.float64)
    for t in range(T):
        c, y_t = step(cell, c, x[:, t])
        np.testing.assert_allclose(np.asarray(y_t), np.asarray(y[:, t]), atol=1e-12, rtol=0)
    for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(carry), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_float64_finite_differences(case, x64):
    cell, _, _, _ = build(case)
    layer = Recurrent(cell)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, E)))
    w = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, H)))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    @jax.jit  # one program per loss, not every op compiled eagerly (§15)
    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x, seq_lengths=LENGTHS) * w)

    g = jax.jit(jax.grad(loss))(params)
    leaves, tree = jax.tree.flatten(params)
    g_leaves = jax.tree.leaves(g)
    rng = np.random.default_rng(5)
    for k, leaf in enumerate(leaves):
        d = [jnp.zeros_like(a) for a in leaves]
        d[k] = jnp.asarray(rng.normal(size=leaf.shape))
        plus = jax.tree.unflatten(tree, [a + 1e-6 * b for a, b in zip(leaves, d)])
        minus = jax.tree.unflatten(tree, [a - 1e-6 * b for a, b in zip(leaves, d)])
        fd = (loss(plus) - loss(minus)) / 2e-6
        an = jnp.sum(g_leaves[k] * d[k])
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-6, atol=1e-7)


def test_indrnn_u_max_is_a_clip_with_zero_gradient_beyond_it(x64):
    cell, p, _, _ = build("indrnn-relu")
    u = np.asarray(cell.recurrent_weight())
    assert np.all(np.abs(u) <= U_MAX) and np.any(np.abs(p["u"]) > U_MAX)
    np.testing.assert_array_equal(np.diag(np.asarray(cell.recurrent_matrices()["u"])), u)


def test_lstmp_output_and_carry_shapes():
    cell = make_cell("lstmp", E, H, rngs=nnx.Rngs(0), proj_size=2)
    carry, y = nnx.jit(lambda m, x: m(x))(Recurrent(cell, return_carry=True), jnp.ones((B, T, E)))
    assert y.shape == (B, T, 2) and carry.h.shape == (B, 2) and carry.c.shape == (B, H)
    with pytest.raises(ValueError, match="proj_size must be in"):
        make_cell("lstmp", E, H, rngs=nnx.Rngs(0), proj_size=H)


@pytest.mark.parametrize("name", ["layernorm_lstm", "layernorm_gru", "peephole_lstm", "lstmp"])
def test_no_fused_loop_is_said(name):
    kw = {"proj_size": 2} if name == "lstmp" else {}
    with pytest.raises(ValueError, match="impl='fused' cannot apply"):
        make_cell(name, E, H, rngs=nnx.Rngs(0), impl="fused", **kw)


def test_make_rnn_layer_kwargs_reach_each_layers_cell():
    kw = {"activation": "relu", "u_max": 1.5, "kernel_std": 0.3}
    per = ({"u_init": (0.0, 0.1)}, {"u_init": (1.2, 1.4), "activation": "identity"})
    stack = make_rnn("indrnn", E, H, num_layers=2, layer_kwargs=per, rngs=nnx.Rngs(0), **kw)
    first, second = (layer.cell for layer in stack.layers)
    assert first.activation == "relu" and second.activation == "identity"
    assert first.u_max == second.u_max == 1.5  # the shared options reach both layers
    assert np.all((np.asarray(first.u[...]) >= 0.0) & (np.asarray(first.u[...]) <= 0.1))
    assert np.all((np.asarray(second.u[...]) >= 1.2) & (np.asarray(second.u[...]) <= 1.4))
    # The stack is its layers: layer 1 alone, fed layer 0's outputs, gives the same numbers.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, E)), jnp.float32)
    y0 = stack.layers[0](x)
    np.testing.assert_array_equal(np.asarray(stack(x)), np.asarray(stack.layers[1](y0)))
    for bad in ({"u_init": (0.0, 1.0)}, [{}]):
        with pytest.raises(ValueError, match=r"layer_kwargs needs one dict per layer \(2\)"):
            make_rnn("indrnn", E, H, num_layers=2, layer_kwargs=bad, rngs=nnx.Rngs(0))


def test_adding_indrnn_variant_draws_the_authors_recurrent_weights():
    cfg = config("adding.py:T=1000,indrnn")
    assert (cfg.model.cell, cfg.model.num_layers, cfg.model.hidden) == ("indrnn", 2, 128)
    model = get_task(cfg.task)(cfg, None).build_model(nnx.Rngs(params=0, dropout=1))
    first, second = (layer.cell for layer in model.encoder.layers)
    u_max = 2.0 ** (1 / 1000)
    assert first.u_max == second.u_max == pytest.approx(u_max)
    u1, u2 = np.asarray(first.u[...]), np.asarray(second.u[...])
    assert u1.min() >= 0 and u1.max() <= u_max and u1.mean() < 0.7  # mostly short memories
    assert u2.min() >= 2.0 ** (-1 / 1000) and u2.max() <= u_max  # all longer than T
    assert np.std(np.asarray(first.w_ih[...])) == pytest.approx(0.001, rel=0.2)


def test_adding_indrnn_smoke_trains(tmp_path):
    res = train(config("adding.py:T=50,indrnn,smoke"), tmp_path / "run")
    assert np.isfinite(res["mse"])
    assert results(tmp_path / "run")["status"] == "done"
