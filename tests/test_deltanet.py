"""Tests for Gated DeltaNet (rnnjax.nn.deltanet). flash-linear-attention is not on the package
index (and its kernels need a GPU), so the independent reference is a float64 numpy
transcription of the paper's gated delta rule, S_t = S_{t-1} α_t (I - β_t k_t k_tᵀ) +
β_t v_t k_tᵀ, o_t = S_t q_t, written in the paper's (Dv, Dk) orientation with explicit
matrices. The sequential and chunked forms (several chunk sizes, T not a multiple of C)
must match it; masks, reverse and float64 finite differences too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from rnnjax.nn import make_cell
from rnnjax.nn.deltanet import gdn_chunked, gdn_sequential, l2_normalize, unit_lower_solve

B, NH, DK, DV = 2, 2, 4, 3

# Jitted forms, shared by the tests (one compiled program per shape, not every op compiled
# eagerly: docs/performance.md §15).
seq_j = jax.jit(gdn_sequential, static_argnames="reverse")
chunk_j = jax.jit(gdn_chunked, static_argnames=("chunk_size", "reverse"))


def inputs(t, key=0, dtype=jnp.float32):
    """Time-major (q, k, v, g, beta, S0): unit-norm q and k, α = exp(g) in ~(0.5, 1)."""
    ks = jax.random.split(jax.random.key(key), 6)
    q = l2_normalize(jax.random.normal(ks[0], (t, B, NH, DK), dtype))
    k = l2_normalize(jax.random.normal(ks[1], (t, B, NH, DK), dtype))
    v = jax.random.normal(ks[2], (t, B, NH, DV), dtype)
    g = -jax.random.uniform(ks[3], (t, B, NH), dtype, 0.0, 0.7)
    beta = jax.random.uniform(ks[4], (t, B, NH), dtype, 0.05, 0.95)
    S0 = jax.random.normal(ks[5], (B, NH, DK, DV), dtype)
    return q, k, v, g, beta, S0


def np_gated_delta_rule(q, k, v, g, beta, S0):
    """The paper's eq. (10) in float64, with the (Dv, Dk) state it writes: one matrix
    product per step, nothing shared with the implementation's delta form."""
    q, k, v, g, beta, S0 = (np.asarray(a, np.float64) for a in (q, k, v, g, beta, S0))
    t, b, nh, dk = k.shape
    S = np.swapaxes(S0, -1, -2).copy()  # (B, Nh, Dv, Dk)
    os = np.zeros(v.shape)
    for s in range(t):
        for i in range(b):
            for h in range(nh):
                kt, vt, a, bt = k[s, i, h], v[s, i, h], np.exp(g[s, i, h]), beta[s, i, h]
                S[i, h] = (S[i, h] @ (a * (np.eye(dk) - bt * np.outer(kt, kt)))
                           + bt * np.outer(vt, kt))
                os[s, i, h] = S[i, h] @ q[s, i, h]
    return np.swapaxes(S, -1, -2), os


@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 32])
def test_matches_float64_reference(chunk):
    t = 10
    args = inputs(t)
    S_ref, o_ref = np_gated_delta_rule(*args)
    errs = {}
    for name, f in {"sequential": seq_j,
                    "chunked": lambda *a: chunk_j(*a, chunk_size=chunk)}.items():
        S, o = f(*args)
        errs[name] = max(np.max(np.abs(np.asarray(o) - o_ref)),
                         np.max(np.abs(np.asarray(S) - S_ref)))
    print(f"gated deltanet vs float64 reference (float32, T={t}, C={chunk}): {errs}")
    assert max(errs.values()) < 1e-5


@pytest.mark.parametrize("chunk", [3, 4])
def test_matches_float64_reference_float64(x64, chunk):
    args = inputs(10, dtype=jnp.float64)
    S_ref, o_ref = np_gated_delta_rule(*args)
    S, o = chunk_j(*args, chunk_size=chunk)
    err = max(np.max(np.abs(np.asarray(o) - o_ref)), np.max(np.abs(np.asarray(S) - S_ref)))
    print(f"gated deltanet chunked vs float64 reference (float64, C={chunk}): {err:.2e}")
    assert err < 1e-10


@settings(max_examples=6, deadline=None)
@given(t=st.integers(1, 17), chunk=st.integers(1, 8), reverse=st.booleans(),
       ragged=st.booleans())
def test_chunked_equals_sequential(t, chunk, reverse, ragged):
    args = inputs(t, key=t)
    mask = None
    if ragged:
        mask = jnp.asarray(np.arange(t)[:, None] < np.array([t, max(1, t // 2)])[None])
    S_s, o_s = seq_j(*args, mask, reverse=reverse)
    S_c, o_c = chunk_j(*args, mask, chunk_size=chunk, reverse=reverse)
    np.testing.assert_allclose(o_c, o_s, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(S_c, S_s, atol=1e-5, rtol=1e-5)


def test_mask_and_reverse_semantics():
    t, n_valid = 9, 5
    q, k, v, g, beta, S0 = inputs(t)
    mask = jnp.asarray(np.arange(t)[:, None] < np.array([t, n_valid])[None])
    for reverse in (False, True):
        S, o = chunk_j(q, k, v, g, beta, S0, mask, chunk_size=4, reverse=reverse)
        row = [a[:n_valid, 1:] for a in (q, k, v, g, beta)]
        S1, o1 = seq_j(*row, S0[1:], reverse=reverse)
        np.testing.assert_allclose(S[1], S1[0], atol=1e-5)
        np.testing.assert_allclose(o[:n_valid, 1], o1[:, 0], atol=1e-5)
        assert np.all(np.asarray(o[n_valid:, 1]) == 0)
    S_r, o_r = chunk_j(q, k, v, g, beta, S0, chunk_size=4, reverse=True)
    S_f, o_f = np_gated_delta_rule(*(jnp.flip(a, 0) for a in (q, k, v, g, beta)), S0)
    np.testing.assert_allclose(o_r, np.flip(o_f, 0), atol=1e-5)
    np.testing.assert_allclose(S_r, S_f, atol=1e-5)


def test_finite_differences(x64):
    args = inputs(5, dtype=jnp.float64)
    mask = jnp.asarray(np.arange(5)[:, None] < np.array([5, 3])[None])
    for f in (lambda *a: gdn_chunked(*a, mask, chunk_size=2),
              lambda *a: gdn_chunked(*a, mask, chunk_size=3, reverse=True),
              lambda *a: gdn_sequential(*a, mask)):
        # Jitted: check_grads evaluates f, its VJP and the finite differences as programs.
        check_grads(jax.jit(f), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gradients_chunked_equal_sequential():
    args = inputs(10)
    w = jax.random.normal(jax.random.key(9), (10, B, NH, DV))

    def loss(f):
        def inner(*a):
            S, o = f(*a)
            return jnp.sum(o * w) + jnp.sum(S**2)
        return inner

    argn = tuple(range(6))
    g_s = jax.jit(jax.grad(loss(gdn_sequential), argnums=argn))(*args)
    g_c = jax.jit(jax.grad(loss(lambda *a: gdn_chunked(*a, chunk_size=4)), argnums=argn))(*args)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_s, g_c))
    print(f"gated deltanet grads chunked vs sequential (float32): {err:.2e}")
    assert err < 1e-4


# ---- the cell (rnnjax.nn.cell protocol) ---------------------------------------------------

# The protocol checks every cell family shares (step == sequence form, ragged rows,
# stacked bidirectional layers, diagnostics hooks, training from a config) are in
# tests/test_cell_contract.py; here is what only this family has.

CE, CH, CB, CT = 3, 4, 3, 7  # cell sizes: E, H, B, T
CELL_KW = {"num_heads": 2, "chunk_size": 3}


def test_cell_matches_float64_transcription():
    """The cell's wiring (L2-normalised q, k, q scaled by Dk^-1/2, β = σ(·),
    g = -exp(A_log) softplus(a + dt_bias)) against np_gated_delta_rule in float64."""
    cell = make_cell("gated_deltanet", CE, CH, rngs=nnx.Rngs(0), **CELL_KW)
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    _, ys = nnx.jit(lambda c, x: c.scan_projected(c.initialize_carry(CB), c.project_inputs(x)))(
        cell, x)
    f64 = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    xp = np.asarray(x, np.float64) @ f64(cell.w_in) + f64(cell.b_in)
    Nh, Dk, Dv = cell.num_heads, cell.key_dim, cell.value_dim
    sizes = np.cumsum([Nh * Dk, Nh * Dk, Nh * Dv, Nh])
    q, k, v, a, b = np.split(xp, sizes, axis=-1)

    def unit(z):
        z = z.reshape(CT, CB, Nh, Dk)
        return z / np.sqrt(np.sum(z**2, -1, keepdims=True) + 1e-6)

    g = -np.exp(f64(cell.A_log)) * np.logaddexp(0.0, a + f64(cell.dt_bias))
    beta = 1.0 / (1.0 + np.exp(-b))
    _, o = np_gated_delta_rule(unit(q) * Dk**-0.5, unit(k), v.reshape(CT, CB, Nh, Dv), g,
                               beta, np.zeros((CB, Nh, Dk, Dv)))
    err = np.max(np.abs(np.asarray(ys) - o.reshape(CT, CB, CH)))
    print(f"GatedDeltaNetCell vs float64 transcription: {err:.2e}")
    assert err < 1e-5


def test_unit_lower_solve_matches_numpy_and_is_pure_xla(x64):
    """The chunk's (I + A) X = b solve against numpy's dense solve in float64, forward and
    reverse mode agreeing, and no LAPACK custom call in a train step's program: jaxlib's
    batched trsm deadlocked XLA's 2-thread CPU pool (the MQAR hang, docs/performance.md)."""
    ks = jax.random.split(jax.random.key(3), 2)
    A = jnp.tril(jax.random.normal(ks[0], (2, 3, 6, 6), jnp.float64), -1) * 0.5
    b = jax.random.normal(ks[1], (2, 3, 6, 4), jnp.float64)
    want = np.linalg.solve(np.eye(6) + np.asarray(A), np.asarray(b))
    np.testing.assert_allclose(jax.jit(unit_lower_solve)(A, b), want, rtol=1e-12, atol=1e-12)
    check_grads(jax.jit(lambda a, y: unit_lower_solve(jnp.tril(a, -1), y)), (A, b), order=1,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

    q, k, v, g, beta, S0 = inputs(10)

    def loss(q, k, v, g, beta):
        return jnp.sum(gdn_chunked(q, k, v, g, beta, S0, chunk_size=4)[1] ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(q, k, v, g, beta).as_text()
    assert "custom_call" not in hlo and "trsm" not in hlo
