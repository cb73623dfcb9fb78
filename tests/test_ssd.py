"""Tests for Mamba-2's SSD (rnnjax.nn.ssd). No CPU package exists (mamba-ssm needs CUDA),
so the independent references are float64 numpy transcriptions written here: the paper's
minimal chunked reference ("ssd_minimal_discrete", Dao & Gu 2024, Listing 1) and the
recurrence itself, one step at a time. The three rnnjax forms (sequential, quadratic,
chunked at several chunk sizes, T not a multiple of C included) must agree with them and
with each other; masks, reverse and float64 finite differences too."""

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
from rnnjax.nn.ssd import segsum, ssd_chunked, ssd_quadratic, ssd_sequential

B, NH, P, N = 2, 2, 3, 4

# Jitted forms, shared by the tests (one compiled program per shape, not every op compiled
# eagerly: docs/performance.md §15).
seq_j = jax.jit(ssd_sequential, static_argnames="reverse")
quad_j = jax.jit(ssd_quadratic, static_argnames="reverse")
chunk_j = jax.jit(ssd_chunked, static_argnames=("chunk_size", "reverse"))


def inputs(t, key=0, dtype=jnp.float32):
    """Time-major (x, dt, A, Bm, Cm, h0) with moderate decays exp(Δ A) in ~(0.4, 1)."""
    ks = jax.random.split(jax.random.key(key), 6)
    x = jax.random.normal(ks[0], (t, B, NH, P), dtype)
    dt = jax.random.uniform(ks[1], (t, B, NH), dtype, 0.01, 0.5)
    A = -jax.random.uniform(ks[2], (NH,), dtype, 0.5, 2.0)
    Bm = jax.random.normal(ks[3], (t, B, NH, N), dtype)
    Cm = jax.random.normal(ks[4], (t, B, NH, N), dtype)
    h0 = jax.random.normal(ks[5], (B, NH, P, N), dtype)
    return x, dt, A, Bm, Cm, h0


# ---- float64 numpy references -------------------------------------------------------------

def np_segsum(a):
    """(..., T) -> (..., T, T): sum of a[j+1..i] for i >= j, -inf above the diagonal."""
    t = a.shape[-1]
    rep = np.repeat(a[..., None], t, axis=-1)  # rep[..., i, j] = a[i]
    rep = np.where(np.tril(np.ones((t, t), bool), -1), rep, 0.0)
    out = np.cumsum(rep, axis=-2)
    return np.where(np.tril(np.ones((t, t), bool)), out, -np.inf)


def ssd_minimal_discrete(X, A, Bm, Cm, block_len, initial_states):
    """The paper's minimal SSD, batch-major: X (b, l, h, p) is Δx, A (b, l, h) is ΔA,
    B/C (b, l, h, n), l a multiple of block_len; returns (Y (b, l, h, p), final state)."""
    b, l, h, p = X.shape
    c = l // block_len

    def ch(v):
        return v.reshape((b, c, block_len) + v.shape[2:])

    X, A, Bm, Cm = ch(X), ch(A), ch(Bm), ch(Cm)
    A = np.moveaxis(A, -1, 1)  # (b, h, c, l)
    A_cumsum = np.cumsum(A, axis=-1)
    # 1. outputs within each chunk (the diagonal blocks)
    L = np.exp(np_segsum(A))
    Y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cm, Bm, L, X)
    # 2. each chunk's end state from its own inputs
    decay_states = np.exp(A_cumsum[..., -1:] - A_cumsum)
    states = np.einsum("bclhn,bhcl,bclhp->bchpn", Bm, decay_states, X)
    # 3. pass states between chunks (the 1-semiseparable recurrence on chunk level)
    states = np.concatenate([initial_states[:, None], states], axis=1)
    decay_chunk = np.exp(np_segsum(np.pad(A_cumsum[..., -1], [(0, 0), (0, 0), (1, 0)])))
    new_states = np.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. the carried states' outputs (the off-diagonal blocks)
    Y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", Cm, states, np.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, l, h, p), final_state


def np_reference(x, dt, A, Bm, Cm, h0, block_len):
    """Our time-major arguments through ssd_minimal_discrete, in float64."""
    f = [np.asarray(v, np.float64) for v in (x, dt, A, Bm, Cm, h0)]
    x, dt, A, Bm, Cm, h0 = f
    def tm(v):  # (T, B, ...) <-> (B, T, ...)
        return np.swapaxes(v, 0, 1)

    Y, h = ssd_minimal_discrete(tm(x * dt[..., None]), tm(dt * A), tm(Bm), tm(Cm),
                                block_len, h0)
    return h, tm(Y)


def np_recurrence(x, dt, A, Bm, Cm, h0):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ, y_t = h_t C_t, one step at a time."""
    x, dt, A, Bm, Cm, h = (np.asarray(v, np.float64) for v in (x, dt, A, Bm, Cm, h0))
    ys = []
    for t in range(x.shape[0]):
        h = (np.exp(dt[t] * A)[..., None, None] * h
             + (dt[t][..., None] * x[t])[..., :, None] * Bm[t][..., None, :])
        ys.append(np.einsum("bhpn,bhn->bhp", h, Cm[t]))
    return h, np.stack(ys)


# ---- tests --------------------------------------------------------------------------------

def test_segsum():
    a = np.random.default_rng(0).normal(size=(2, 5))
    np.testing.assert_allclose(np.asarray(segsum(jnp.asarray(a))), np_segsum(a), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 12, 32])
def test_forms_match_minimal_reference_float32(chunk):
    t = 12
    args = inputs(t)
    h_ref, y_ref = np_reference(*args, block_len=4)
    h_rec, y_rec = np_recurrence(*args)
    # the two references agree
    assert max(np.max(np.abs(y_rec - y_ref)), np.max(np.abs(h_rec - h_ref))) < 1e-10
    errs = {}
    for name, f in {"sequential": seq_j, "quadratic": quad_j,
                    "chunked": lambda *a: chunk_j(*a, chunk_size=chunk)}.items():
        h, y = f(*args)
        errs[name] = max(np.max(np.abs(np.asarray(y) - y_ref)),
                         np.max(np.abs(np.asarray(h) - h_ref)))
    print(f"ssd vs float64 minimal reference (float32, T={t}, C={chunk}): {errs}")
    assert max(errs.values()) < 1e-5


@pytest.mark.parametrize("chunk", [2, 5, 6])
def test_forms_match_minimal_reference_float64(x64, chunk):
    t = 11  # not a multiple of 2, 5 or 6
    args = inputs(t, dtype=jnp.float64)
    h_ref, y_ref = np_recurrence(*args)
    # the paper's minimal code needs T a multiple of its block: its first 6 steps, blocks of 3
    _, y_ref6 = np_reference(*(v[:6] if v.ndim > 1 and v.shape[0] == t else v
                               for v in args[:5]), args[5], block_len=3)
    errs = {}
    for name, f in {"sequential": seq_j, "quadratic": quad_j,
                    "chunked": lambda *a: chunk_j(*a, chunk_size=chunk)}.items():
        h, y = f(*args)
        errs[name] = max(np.max(np.abs(np.asarray(y) - y_ref)),
                         np.max(np.abs(np.asarray(h) - h_ref)))
        _, y6 = f(*(v[:6] if v.ndim > 1 and v.shape[0] == t else v for v in args[:5]), args[5])
        errs[name + "@minimal"] = np.max(np.abs(np.asarray(y6) - y_ref6))
    print(f"ssd vs float64 references (float64, T={t}, C={chunk}): {errs}")
    assert max(errs.values()) < 1e-10


@settings(max_examples=6, deadline=None)
@given(t=st.integers(1, 17), chunk=st.integers(1, 8), reverse=st.booleans(),
       ragged=st.booleans())
def test_chunked_equals_sequential(t, chunk, reverse, ragged):
    args = inputs(t, key=t)
    mask = None
    if ragged:
        mask = jnp.asarray(np.arange(t)[:, None] < np.array([t, max(1, t // 2)])[None])
    # Why jit: one compiled program per shape, not an op-by-op compile of every op.
    h_s, y_s = seq_j(*args, mask, reverse=reverse)
    h_c, y_c = chunk_j(*args, mask, chunk_size=chunk, reverse=reverse)
    h_q, y_q = quad_j(*args, mask, reverse=reverse)
    for a, b in ((y_c, y_s), (h_c, h_s), (y_q, y_s), (h_q, h_s)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_mask_and_reverse_semantics():
    """A padded row equals the row run alone, forward and reverse; masked outputs are 0."""
    t, n_valid = 9, 5
    x, dt, A, Bm, Cm, h0 = inputs(t)
    mask = jnp.asarray(np.arange(t)[:, None] < np.array([t, n_valid])[None])
    for reverse in (False, True):
        h, y = chunk_j(x, dt, A, Bm, Cm, h0, mask, chunk_size=4, reverse=reverse)
        row = [v[:n_valid, 1:] for v in (x, dt, Bm, Cm)]
        h1, y1 = seq_j(row[0], row[1], A, row[2], row[3], h0[1:], reverse=reverse)
        np.testing.assert_allclose(h[1], h1[0], atol=1e-5)
        np.testing.assert_allclose(y[:n_valid, 1], y1[:, 0], atol=1e-5)
        assert np.all(np.asarray(y[n_valid:, 1]) == 0)
    # reverse == forward on the time-flipped sequence
    h_r, y_r = chunk_j(x, dt, A, Bm, Cm, h0, chunk_size=4, reverse=True)
    fl = [jnp.flip(v, 0) for v in (x, dt, Bm, Cm)]
    h_f, y_f = seq_j(fl[0], fl[1], A, fl[2], fl[3], h0)
    np.testing.assert_allclose(y_r, jnp.flip(y_f, 0), atol=1e-5)
    np.testing.assert_allclose(h_r, h_f, atol=1e-5)


def test_finite_differences(x64):
    args = inputs(5, dtype=jnp.float64)
    mask = jnp.asarray(np.arange(5)[:, None] < np.array([5, 3])[None])
    for f in (lambda *a: ssd_chunked(*a, mask, chunk_size=2),
              lambda *a: ssd_quadratic(*a, mask, reverse=True),
              lambda *a: ssd_sequential(*a, mask)):
        # Jitted: check_grads evaluates f, its VJP and the finite differences as programs.
        check_grads(jax.jit(f), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gradients_chunked_equal_sequential():
    args = inputs(10)
    w = jax.random.normal(jax.random.key(9), (10, B, NH, P))

    def loss(f):
        return lambda *a: jnp.sum(f(*a)[1] * w) + jnp.sum(f(*a)[0] ** 2)

    g_s = jax.jit(jax.grad(loss(ssd_sequential), argnums=tuple(range(6))))(*args)
    g_c = jax.jit(jax.grad(loss(lambda *a: ssd_chunked(*a, chunk_size=3)),
                           argnums=tuple(range(6))))(*args)
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_s, g_c))
    print(f"ssd grads chunked vs sequential (float32): {err:.2e}")
    assert err < 1e-4


# ---- the cell (rnnjax.nn.cell protocol) ---------------------------------------------------

# The protocol checks every cell family shares (step == sequence form, ragged rows,
# stacked bidirectional layers, diagnostics hooks, training from a config) are in
# tests/test_cell_contract.py; here is what only this family has.

CE, CH, CB, CT = 3, 4, 3, 7  # cell sizes: E, H, B, T
CELL_KW = {"num_heads": 2, "state_size": 3, "chunk_size": 3}


def test_cell_matches_float64_transcription():
    """The cell's wiring (Δ = softplus(Δ_raw + dt_bias), A = -exp(A_log), B/C shared by
    the heads, y = C h + D x) against np_recurrence in float64."""
    cell = make_cell("mamba2", CE, CH, rngs=nnx.Rngs(0), **CELL_KW)
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    _, ys = nnx.jit(lambda c, x: c.scan_projected(c.initialize_carry(CB), c.project_inputs(x)))(
        cell, x)
    f64 = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    xp = np.asarray(x, np.float64) @ f64(cell.w_in) + f64(cell.b_in)
    Hh, Ns, Nh = CH, cell.state_size, cell.num_heads
    P = Hh // Nh
    xs = xp[..., :Hh].reshape(CT, CB, Nh, P)
    Bm = np.repeat(xp[..., None, Hh : Hh + Ns], Nh, axis=-2)
    Cm = np.repeat(xp[..., None, Hh + Ns : Hh + 2 * Ns], Nh, axis=-2)
    dt = np.logaddexp(0.0, xp[..., Hh + 2 * Ns :] + f64(cell.dt_bias))
    A = -np.exp(f64(cell.A_log))
    _, y = np_recurrence(xs, dt, A, Bm, Cm, np.zeros((CB, Nh, P, Ns)))
    ref = (y + f64(cell.D)[:, None] * xs).reshape(CT, CB, Hh)
    err = np.max(np.abs(np.asarray(ys) - ref))
    print(f"SSDCell vs float64 transcription: {err:.2e}")
    assert err < 1e-5
