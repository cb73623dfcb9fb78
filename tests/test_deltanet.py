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
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from rnnjax.nn.deltanet import gdn_chunked, gdn_sequential, l2_normalize

B, NH, DK, DV = 2, 2, 4, 3


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
    for name, f in {"sequential": gdn_sequential,
                    "chunked": lambda *a: gdn_chunked(*a, chunk_size=chunk)}.items():
        S, o = f(*args)
        errs[name] = max(np.max(np.abs(np.asarray(o) - o_ref)),
                         np.max(np.abs(np.asarray(S) - S_ref)))
    print(f"gated deltanet vs float64 reference (float32, T={t}, C={chunk}): {errs}")
    assert max(errs.values()) < 1e-5


@pytest.mark.parametrize("chunk", [3, 4])
def test_matches_float64_reference_float64(x64, chunk):
    args = inputs(10, dtype=jnp.float64)
    S_ref, o_ref = np_gated_delta_rule(*args)
    S, o = gdn_chunked(*args, chunk_size=chunk)
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
    S_s, o_s = gdn_sequential(*args, mask, reverse=reverse)
    S_c, o_c = gdn_chunked(*args, mask, chunk_size=chunk, reverse=reverse)
    np.testing.assert_allclose(o_c, o_s, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(S_c, S_s, atol=1e-5, rtol=1e-5)


def test_mask_and_reverse_semantics():
    t, n_valid = 9, 5
    q, k, v, g, beta, S0 = inputs(t)
    mask = jnp.asarray(np.arange(t)[:, None] < np.array([t, n_valid])[None])
    for reverse in (False, True):
        S, o = gdn_chunked(q, k, v, g, beta, S0, mask, chunk_size=4, reverse=reverse)
        row = [a[:n_valid, 1:] for a in (q, k, v, g, beta)]
        S1, o1 = gdn_sequential(*row, S0[1:], reverse=reverse)
        np.testing.assert_allclose(S[1], S1[0], atol=1e-5)
        np.testing.assert_allclose(o[:n_valid, 1], o1[:, 0], atol=1e-5)
        assert np.all(np.asarray(o[n_valid:, 1]) == 0)
    S_r, o_r = gdn_chunked(q, k, v, g, beta, S0, chunk_size=4, reverse=True)
    S_f, o_f = np_gated_delta_rule(*(jnp.flip(a, 0) for a in (q, k, v, g, beta)), S0)
    np.testing.assert_allclose(o_r, np.flip(o_f, 0), atol=1e-5)
    np.testing.assert_allclose(S_r, S_f, atol=1e-5)


def test_finite_differences(x64):
    args = inputs(5, dtype=jnp.float64)
    mask = jnp.asarray(np.arange(5)[:, None] < np.array([5, 3])[None])
    for f in (lambda *a: gdn_chunked(*a, mask, chunk_size=2),
              lambda *a: gdn_chunked(*a, mask, chunk_size=3, reverse=True),
              lambda *a: gdn_sequential(*a, mask)):
        check_grads(f, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gradients_chunked_equal_sequential():
    args = inputs(10)
    w = jax.random.normal(jax.random.key(9), (10, B, NH, DV))

    def loss(f):
        def inner(*a):
            S, o = f(*a)
            return jnp.sum(o * w) + jnp.sum(S**2)
        return inner

    argn = tuple(range(6))
    g_s = jax.grad(loss(gdn_sequential), argnums=argn)(*args)
    g_c = jax.grad(loss(lambda *a: gdn_chunked(*a, chunk_size=4)), argnums=argn)(*args)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_s, g_c))
    print(f"gated deltanet grads chunked vs sequential (float32): {err:.2e}")
    assert err < 1e-4
