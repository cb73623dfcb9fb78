"""Tests for the RG-LRU (rnnjax.nn.rglru) against the authors' package, recurrentgemma's
``RGLRU`` layer on the same weights (outputs, final state and gradients, with and without
segment resets), plus float64 finite differences and step == scan in every scan mode."""

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
from rnnjax.nn.rglru import (
    RGLRUParams,
    rglru_a_param_init,
    rglru_coefficients,
    rglru_scan,
    rglru_step,
)

B, T, H, N = 2, 9, 8, 2  # N heads of H/N = 4 channels

# Jitted, shared by the tests: one compiled program per shape, not every op compiled
# eagerly (docs/performance.md §15).
scan_j = jax.jit(rglru_scan, static_argnames=("reverse", "mode"))
step_j = jax.jit(rglru_step)


def random_params(key, h=H, n=N, dtype=jnp.float32) -> RGLRUParams:
    ks = jax.random.split(key, 5)
    hh = h // n
    return RGLRUParams(
        a_param=rglru_a_param_init(ks[0], (h,), dtype),
        w_a=(jax.random.normal(ks[1], (n, hh, hh)) / np.sqrt(hh)).astype(dtype),
        b_a=(0.3 * jax.random.normal(ks[2], (n, hh))).astype(dtype),
        w_x=(jax.random.normal(ks[3], (n, hh, hh)) / np.sqrt(hh)).astype(dtype),
        b_x=(0.3 * jax.random.normal(ks[4], (n, hh))).astype(dtype),
    )


def to_recurrentgemma(p: RGLRUParams):
    """Our parameters in recurrentgemma's RGLRU layout (same meaning, different names)."""
    return {"params": {"a_param": p.a_param,
                       "a_gate": {"w": p.w_a, "b": p.b_a},
                       "input_gate": {"w": p.w_x, "b": p.b_x}}}


SEGMENTS = {
    # segment_pos as recurrentgemma takes it; (B, T)
    "fresh": np.tile(np.arange(T), (B, 1)),  # reset at t = 0 only
    "packed": np.array([[0, 1, 2, 0, 1, 2, 3, 0, 1], list(range(T))]),  # resets mid-row
    "continued": np.tile(np.arange(T) + 4, (B, 1)),  # no reset: carries the cache h0
}


@pytest.fixture(scope="module")
def rg():
    layers = pytest.importorskip("recurrentgemma.jax.layers")
    return layers.RGLRU(width=H, num_heads=N)


@pytest.mark.parametrize("segments", sorted(SEGMENTS))
@pytest.mark.parametrize("mode", ["sequential", "associative"])
def test_matches_recurrentgemma(rg, segments, mode):
    p = random_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (B, T, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    seg = jnp.asarray(SEGMENTS[segments])
    w_y = jax.random.normal(jax.random.key(3), (B, T, H))
    w_h = jax.random.normal(jax.random.key(4), (B, H))

    # A check that the layout mapping is right: recurrentgemma's own init has our shapes.
    ref_vars = rg.init(jax.random.key(5), x, seg, h0)
    assert jax.tree.map(jnp.shape, ref_vars) == jax.tree.map(jnp.shape, to_recurrentgemma(p))

    def ref_loss(p, x, h0):
        y, last = rg.apply(to_recurrentgemma(p), x, seg, h0)
        return jnp.sum(y * w_y) + jnp.sum(last * w_h), (y, last)

    def our_loss(p, x, h0):
        last, hs = rglru_scan(jnp.swapaxes(x, 0, 1), h0, p, reset=(seg == 0).T, mode=mode)
        y = jnp.swapaxes(hs, 0, 1)
        return jnp.sum(y * w_y) + jnp.sum(last * w_h), (y, last)

    (_, (y_ref, last_ref)), g_ref = jax.jit(
        jax.value_and_grad(ref_loss, (0, 1, 2), has_aux=True))(p, x, h0)
    (_, (y, last)), g = jax.jit(jax.value_and_grad(our_loss, (0, 1, 2), has_aux=True))(p, x, h0)
    err_y = float(jnp.max(jnp.abs(y - y_ref)))
    err_h = float(jnp.max(jnp.abs(last - last_ref)))
    err_g = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g),
                                                               jax.tree.leaves(g_ref)))
    print(f"rglru vs recurrentgemma [{segments}, {mode}]: y {err_y:.2e} h {err_h:.2e} "
          f"grad {err_g:.2e}")
    assert err_y < 1e-5 and err_h < 1e-5
    assert err_g < 1e-4


def np_rglru(x, h0, p, reset):
    """float64 numpy transcription of Griffin eqs. 1-4, one step at a time."""
    p = RGLRUParams(*(np.asarray(v, np.float64) for v in p))
    n, hh, _ = p.w_a.shape
    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))

    lam = -p.a_param  # the paper's Λ: a = σ(Λ)^(c r)
    hs, h = [], np.asarray(h0, np.float64)
    for t in range(x.shape[0]):
        xt = np.asarray(x[t], np.float64).reshape(-1, n, hh)
        r = sig(np.einsum("bni,nij->bnj", xt, p.w_a) + p.b_a).reshape(-1, n * hh)
        i = sig(np.einsum("bni,nij->bnj", xt, p.w_x) + p.b_x).reshape(-1, n * hh)
        a = sig(lam) ** (8.0 * r)
        norm = np.sqrt(1.0 - a**2)
        rs = np.asarray(reset[t])[:, None]
        a, norm = np.where(rs, 0.0, a), np.where(rs, 1.0, norm)
        h = a * h + norm * i * xt.reshape(-1, n * hh)
        hs.append(h)
    return np.stack(hs)


def test_matches_paper_equations_float64():
    """The paper's a = σ(Λ)^(c r) written as a power, against our log-space form."""
    p = random_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (T, B, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    reset = jnp.asarray(SEGMENTS["packed"].T == 0)
    _, hs = scan_j(x, h0, p, reset=reset)
    err = np.max(np.abs(np.asarray(hs) - np_rglru(x, h0, p, reset)))
    print(f"rglru vs float64 paper transcription: {err:.2e}")
    assert err < 1e-5


@settings(max_examples=8, deadline=None)
@given(t=st.integers(1, 12), reverse=st.booleans())
def test_step_equals_scan_modes(t, reverse):
    p = random_params(jax.random.key(t))
    x = jax.random.normal(jax.random.key(1), (t, B, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    h, hs_loop = h0, []
    for s in (reversed(range(t)) if reverse else range(t)):
        h = step_j(h, x[s], p)
        hs_loop.append(h)
    hs_loop = jnp.stack(hs_loop[::-1] if reverse else hs_loop)
    for mode in ("sequential", "associative"):
        last, hs = scan_j(x, h0, p, reverse=reverse, mode=mode)
        np.testing.assert_allclose(hs, hs_loop, atol=1e-5)
        np.testing.assert_allclose(last, h, atol=1e-5)


def test_mask_keeps_state_and_zeroes_output():
    p = random_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (T, B, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    lengths = np.array([T, 4])
    mask = jnp.asarray(np.arange(T)[:, None] < lengths[None])
    last, hs = scan_j(x, h0, p, mask)
    last1, hs1 = scan_j(x[:4, 1:], h0[1:], p)
    np.testing.assert_allclose(last[1], last1[0], atol=1e-6)
    np.testing.assert_allclose(hs[:4, 1], hs1[:, 0], atol=1e-6)
    assert np.all(np.asarray(hs[4:, 1]) == 0)


def test_reset_drops_state():
    p = random_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (B, H))
    a, b = rglru_coefficients(x, p, reset=jnp.ones((B,), bool))
    i = jax.nn.sigmoid(jnp.einsum("bni,nij->bnj", x.reshape(B, N, -1), p.w_x) + p.b_x)
    np.testing.assert_array_equal(a, 0.0)
    np.testing.assert_allclose(b, i.reshape(B, H) * x, atol=1e-7)


def test_init_ring():
    a_param = rglru_a_param_init(jax.random.key(0), (4096,))
    sig_lam = np.exp(-jax.nn.softplus(a_param))  # σ(Λ)
    assert 0.9 - 1e-6 <= sig_lam.min() and sig_lam.max() <= 0.999 + 1e-6


def test_finite_differences(x64):
    p = random_params(jax.random.key(0), h=4, n=2, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 2, 4), jnp.float64)
    h0 = jax.random.normal(jax.random.key(2), (2, 4), jnp.float64)
    mask = jnp.asarray(np.arange(5)[:, None] < np.array([5, 3])[None])
    reset = jnp.zeros((5, 2), bool).at[2, 0].set(True)
    for mode in ("sequential", "associative"):
        def f(p, x, h0, mode=mode):
            return rglru_scan(x, h0, p, mask, reset=reset, mode=mode)

        # Jitted: check_grads evaluates f, its VJP and the finite differences as programs.
        check_grads(jax.jit(f), (p, x, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ---- the cell (rnnjax.nn.cell protocol) ---------------------------------------------------

# The protocol checks every cell family shares (step == sequence form, ragged rows,
# stacked bidirectional layers, diagnostics hooks, training from a config) are in
# tests/test_cell_contract.py; here is what only this family has.

CE, CH, CB, CT = 3, 4, 3, 7  # cell sizes: E, H, B, T
CELL_KW = {"num_heads": 2}


def test_cell_matches_float64_transcription():
    """The cell's wiring (dense input map, then the RG-LRU) against np_rglru in float64."""
    cell = make_cell("rglru", CE, CH, rngs=nnx.Rngs(0), **CELL_KW)
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    _, ys = nnx.jit(lambda c, x: c.scan_projected(c.initialize_carry(CB), c.project_inputs(x)))(
        cell, x)
    xin = np.asarray(x, np.float64) @ np.asarray(cell.w_in[...], np.float64) + np.asarray(
        cell.b_in[...], np.float64)
    ref = np_rglru(xin, np.zeros((CB, CH)), cell.params(jnp.float32), np.zeros((CT, CB), bool))
    err = np.max(np.abs(np.asarray(ys) - ref))
    print(f"RGLRUCell vs float64 transcription: {err:.2e}")
    assert err < 1e-5
