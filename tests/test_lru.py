"""Tests for the LRU cell: a complex128 numpy transcription of the paper's equations (Orvieto
et al. 2023, eqs. 1-2 with the exponential parameterisation and γ normalisation), the step
form, both scan modes, float64 finite differences, the initialisation, and the cell inside
stacked/bidirectional layers, seq2seq, beam search and a training run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import config
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.nn import LRUCell, LRUState, Recurrent, make_cell, make_rnn

B, T, E, H = 3, 7, 4, 5
LENGTHS = np.array([7, 3, 1])


def paper_params(cell):
    """The paper's (λ, γ, B, C, D) from the cell's parameters, in complex128/float64."""
    p = {k: np.asarray(getattr(cell, k)[...], np.float64)
         for k in ("nu_log", "theta_log", "gamma_log", "w_ih", "w_out")}
    Hh = p["nu_log"].shape[0]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    Bm = (p["w_ih"][:, :Hh] + 1j * p["w_ih"][:, Hh : 2 * Hh]).T  # (N, E)
    Dm = p["w_ih"][:, 2 * Hh :].T  # (H, E)
    Cm = p["w_out"][:Hh].T - 1j * p["w_out"][Hh:].T  # (H, N)
    return lam, gamma, Bm, Cm, Dm


def np_gelu(v):
    """GELU, tanh form (Hendrycks & Gimpel 2016, eq. 2), as jax.nn.gelu's default."""
    return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def ref_lru(cell, x, carry, lengths, reverse):
    """One row at a time: s_t = λ s_{t-1} + γ (B x_t), y_t = act(Re(C s_t) + D x_t)."""
    lam, gamma, Bm, Cm, Dm = paper_params(cell)
    act = np_gelu if cell.activation == "gelu" else (lambda v: v)
    x = np.asarray(x, np.float64)
    h0 = np.asarray(carry.h, np.float64)
    s0 = np.asarray(carry.re, np.float64) + 1j * np.asarray(carry.im, np.float64)
    ys = np.zeros(x.shape[:2] + (h0.shape[-1],))
    h_last, s_last = h0.copy(), s0.copy()
    for r in range(x.shape[0]):
        s, h = s0[r].copy(), h0[r].copy()
        steps = [t for t in range(x.shape[1]) if t < lengths[r]]
        for t in (reversed(steps) if reverse else steps):
            s = lam * s + gamma * (Bm @ x[r, t])
            h = act((Cm @ s).real + Dm @ x[r, t])
            ys[r, t] = h
        h_last[r], s_last[r] = h, s
    return LRUState(h_last, s_last.real, s_last.imag), ys


def build(seed=0, mode="associative", e=E, h=H, **kw):
    return LRUCell(e, h, scan_mode=mode, rngs=nnx.Rngs(seed), **kw)


def random_carry(rng, b=B, h=H, dtype=jnp.float32):
    return LRUState(*(jnp.asarray(rng.normal(size=(b, h)) * 0.5, dtype) for _ in range(3)))


def assert_carry_close(got, want, atol):
    for name, g, w in zip(LRUState._fields, got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("mode", ["associative", "sequential"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("given_carry", [False, True], ids=["zero_h0", "given_h0"])
@pytest.mark.parametrize("activation", ["gelu", "none"])
def test_matches_paper_equations(mode, reverse, given_carry, activation):
    cell = build(seed=1, mode=mode, r_min=0.5, r_max=0.99, activation=activation)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    carry0 = random_carry(rng) if given_carry else cell.initialize_carry((B,))
    layer = Recurrent(cell, reverse=reverse, return_carry=True)
    # Jitted: one program per shape, not every op compiled eagerly (docs/performance.md §15).
    run = nnx.jit(lambda m, x, n, c: m(x, seq_lengths=n, initial_carry=c))
    carry, y = run(layer, x, LENGTHS, carry0 if given_carry else None)
    want_carry, want_y = ref_lru(cell, x, carry0, LENGTHS, reverse)
    np.testing.assert_allclose(np.asarray(y), want_y, atol=2e-5, rtol=2e-5)
    assert_carry_close(carry, want_carry, 2e-5)
    assert np.all(np.asarray(y)[1, 3:] == 0.0) and np.all(np.asarray(y)[2, 1:] == 0.0)


def test_step_form_equals_scan_and_a_row_without_valid_steps_keeps_its_carry():
    cell = build(seed=3)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    carry0 = random_carry(rng)
    run = nnx.jit(lambda m, x, c, mask=None: m(x, mask=mask, initial_carry=c))  # §15
    step = nnx.jit(lambda cell, c, x_t: cell(c, x_t))
    carry, y = run(Recurrent(cell, return_carry=True), x, carry0)
    c, ys = carry0, []
    for t in range(T):
        c, y_t = step(cell, c, x[:, t])
        ys.append(y_t)
    np.testing.assert_allclose(np.stack(ys, 1), np.asarray(y), atol=1e-5, rtol=1e-5)
    assert_carry_close(carry, c, 1e-5)

    mask = np.ones((B, T), bool)
    mask[1] = False
    carry, y = run(Recurrent(cell, return_carry=True), x, carry0, jnp.asarray(mask))
    assert_carry_close(jax.tree.map(lambda a: a[1], carry), jax.tree.map(lambda a: a[1], carry0),
                       0.0)
    assert np.all(np.asarray(y)[1] == 0.0)


def test_parameter_and_input_gradients_agree_across_modes():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    carry0 = random_carry(rng)
    grads = {}
    for mode in ("associative", "sequential"):
        layer = Recurrent(build(seed=6, mode=mode), return_carry=True)
        graphdef, params = nnx.split(layer)

        def loss(params, x, carry0):
            carry, y = nnx.merge(graphdef, params)(  # noqa: B023 (called in this iteration)
                x, seq_lengths=LENGTHS, initial_carry=carry0)
            return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(c)) for c in carry)

        grads[mode] = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, carry0)
    a, s = grads["associative"], grads["sequential"]
    # Every row has a valid step, so the initial h (read only by rows without one) gets none.
    assert np.all(np.asarray(s[2].h) == 0) and np.all(np.asarray(a[2].h) == 0)
    for ga, gs in zip(jax.tree.leaves(a[:2] + a[2][1:]), jax.tree.leaves(s[:2] + s[2][1:])):
        assert np.abs(np.asarray(gs)).max() > 0
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradients_match_float64_finite_differences(x64, reverse):
    cell = build(seed=7, r_min=0.3, r_max=0.95, param_dtype=jnp.float64, dtype=jnp.float64)
    layer = Recurrent(cell, reverse=reverse, return_carry=True)
    graphdef, params = nnx.split(layer)
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(B, T, E)))
    carry0 = random_carry(rng, dtype=jnp.float64)
    r_y = jnp.asarray(rng.normal(size=(B, T, H)))
    r_c = [jnp.asarray(rng.normal(size=(B, H))) for _ in range(3)]

    @jax.jit
    def loss(params, x, carry0):
        carry, y = nnx.merge(graphdef, params)(x, seq_lengths=LENGTHS, initial_carry=carry0)
        return jnp.sum(y * r_y) + sum(jnp.sum(c * r) for c, r in zip(carry, r_c))

    primal = (params, x, carry0)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*primal)
    leaves, treedef = jax.tree.flatten(primal)
    eps = 1e-6
    for k in range(-1, len(leaves)):  # all at once, then each leaf alone
        keys = jax.random.split(jax.random.key(k + 1), len(leaves))
        v = jax.tree.unflatten(treedef, [
            jax.random.normal(key, a.shape, jnp.float64) if k in (-1, i) else jnp.zeros_like(a)
            for i, (key, a) in enumerate(zip(keys, leaves))])
        analytic = sum(jax.tree.leaves(jax.tree.map(lambda g, d: jnp.sum(g * d), grads, v)))
        plus = loss(*jax.tree.map(lambda a, d: a + eps * d, primal, v))
        minus = loss(*jax.tree.map(lambda a, d: a - eps * d, primal, v))
        numeric = (plus - minus) / (2 * eps)
        if k == len(leaves) - 3:  # carry0.h: read only by rows without a valid step (none)
            assert float(analytic) == 0.0 and abs(float(numeric)) < 1e-8
            continue
        assert abs(float(analytic)) > 1e-3
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=1e-8)


def test_initialisation_follows_the_paper():
    r_min, r_max, max_phase = 0.4, 0.9, math.pi / 4
    cell = LRUCell(16, 64, r_min=r_min, r_max=r_max, max_phase=max_phase, rngs=nnx.Rngs(0))
    lam = np.asarray(cell.eigenvalues())
    mod, phase = np.abs(lam), np.angle(lam) % (2 * np.pi)
    assert mod.min() >= r_min - 1e-6 and mod.max() <= r_max + 1e-6
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-6
    assert mod.max() - mod.min() > 0.3 and phase.max() - phase.min() > 0.5  # spread, not a point
    gamma = np.exp(np.asarray(cell.gamma_log[...], np.float64))
    np.testing.assert_allclose(gamma, np.sqrt(1 - mod.astype(np.float64) ** 2), rtol=1e-5)
    # E == H: D starts as the paper's diagonal.
    square = LRUCell(8, 8, rngs=nnx.Rngs(1))
    d = np.asarray(square.w_ih[...])[:, 16:]
    assert np.all(d[~np.eye(8, dtype=bool)] == 0) and np.all(np.diag(d) != 0)
    assert "lru" in __import__("rnnjax.nn", fromlist=["CELLS"]).CELLS
    assert isinstance(make_cell("lru", 3, 4, rngs=nnx.Rngs(0), r_min=0.5), LRUCell)


def test_normalisation_keeps_the_state_variance_of_white_noise():
    """γ = sqrt(1 - |λ|²) makes E|s_t|² = E|B x|² in the stationary limit (the paper's aim)."""
    cell = LRUCell(1, 32, r_min=0.9, r_max=0.999, rngs=nnx.Rngs(2))
    lam, gamma, *_ = paper_params(cell)
    stationary = gamma**2 / (1 - np.abs(lam) ** 2)
    np.testing.assert_allclose(stationary, 1.0, rtol=1e-4)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="r_min < r_max"):
        LRUCell(2, 3, r_min=0.9, r_max=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_phase"):
        LRUCell(2, 3, max_phase=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown activation"):
        LRUCell(2, 3, activation="relu6", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="complex"):
        LRUCell(2, 3, scan_mode="log_space", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown scan mode"):
        LRUCell(2, 3, scan_mode="fast", rngs=nnx.Rngs(0))


@settings(max_examples=8, deadline=None)
@given(t=st.integers(1, 29), reverse=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_modes_agree_for_any_length(t, reverse, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, t, E)), jnp.float32)
    lengths = jnp.asarray(rng.integers(1, t + 1, size=B))
    # Why jit: one compiled program per example, not hundreds of op-by-op compiles.
    outs = [nnx.jit(lambda layer, x, n: layer(x, seq_lengths=n))(
        Recurrent(build(seed=seed % 7, mode=m), reverse=reverse, return_carry=True), x, lengths)
        for m in ("associative", "sequential")]
    for a, s in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(s), atol=2e-5, rtol=2e-5)


def test_stacked_bidirectional_ragged_against_reference():
    rnn = make_rnn("lru", E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(9))
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    carries, y = nnx.jit(lambda m, x, n: m(x, seq_lengths=n, return_carry=True))(rnn, x, LENGTHS)
    inp = np.asarray(x)
    for layer, carry in zip(rnn.layers, carries):
        outs = []
        for half, c in ((layer.forward, carry[0]), (layer.backward, carry[1])):
            want_c, want_y = ref_lru(half.cell, inp, half.cell.initialize_carry((B,)), LENGTHS,
                                     half.reverse)
            assert_carry_close(c, want_c, 5e-5)
            outs.append(want_y)
        inp = np.concatenate(outs, -1)
    np.testing.assert_allclose(np.asarray(y), inp, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("spec,overrides", [
    ("adding.py:smoke,cell=lru", ["model.cell_kwargs.r_min=0.5"]),
    ("addition.py:smoke,cell=lru,attention=luong_general", ["model.bidirectional=True"]),
])
def test_trains_from_a_config(tmp_path, spec, overrides):
    """End to end: the config trains, evaluates (seq2seq: greedy and beam search over the
    LRU carry, bridged from a bidirectional encoder) and reports finite metrics."""
    from rnnjax.train.trainer import train_and_evaluate

    final = train_and_evaluate(config(spec, *overrides), tmp_path, progress=False)
    assert final and all(np.isfinite(v) for v in final.values() if isinstance(v, float))
    if spec.startswith("addition"):
        assert 0.0 <= final["beam_exact_match"] <= 1.0
