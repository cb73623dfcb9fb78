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

from rnnjax.configlib import load_config
from rnnjax.diagnostics import diagnose, hidden_grads
from rnnjax.nn import make_cell, make_rnn
from rnnjax.nn.rglru import (
    RGLRUParams,
    rglru_a_param_init,
    rglru_coefficients,
    rglru_scan,
    rglru_step,
)
from rnnjax.train.trainer import train_and_evaluate

B, T, H, N = 2, 9, 8, 2  # N heads of H/N = 4 channels


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

    (_, (y_ref, last_ref)), g_ref = jax.value_and_grad(ref_loss, (0, 1, 2), has_aux=True)(p, x, h0)
    (_, (y, last)), g = jax.value_and_grad(our_loss, (0, 1, 2), has_aux=True)(p, x, h0)
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
    _, hs = rglru_scan(x, h0, p, reset=reset)
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
        h = rglru_step(h, x[s], p)
        hs_loop.append(h)
    hs_loop = jnp.stack(hs_loop[::-1] if reverse else hs_loop)
    for mode in ("sequential", "associative"):
        last, hs = rglru_scan(x, h0, p, reverse=reverse, mode=mode)
        np.testing.assert_allclose(hs, hs_loop, atol=1e-5)
        np.testing.assert_allclose(last, h, atol=1e-5)


def test_mask_keeps_state_and_zeroes_output():
    p = random_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (T, B, H))
    h0 = jax.random.normal(jax.random.key(2), (B, H))
    lengths = np.array([T, 4])
    mask = jnp.asarray(np.arange(T)[:, None] < lengths[None])
    last, hs = rglru_scan(x, h0, p, mask)
    last1, hs1 = rglru_scan(x[:4, 1:], h0[1:], p)
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

        check_grads(f, (p, x, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ---- the cell (rnnjax.nn.cell protocol) ---------------------------------------------------

CE, CH, CB, CT = 3, 4, 3, 7  # cell sizes: E, H, B, T
CELL_NAME = "rglru"
CELL_KW = {"num_heads": 2}
CELL_MODES = ("associative", "sequential")
CLENGTHS = np.array([7, 3, 1])


def _cell(seed=0, **kw):
    return make_cell(CELL_NAME, CE, CH, rngs=nnx.Rngs(seed), **{**CELL_KW, **kw})


def _perturb_carry(carry, key):
    """A non-zero initial carry, so that tests see the state flow in."""
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, v.shape, v.dtype)
                                     for k, v in zip(keys, leaves)])


@pytest.mark.parametrize("mode", CELL_MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_cell_step_form_equals_sequence_form(mode, reverse):
    cell = _cell(scan_mode=mode)
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    c0 = _perturb_carry(cell.initialize_carry(CB), jax.random.key(2))
    carry, ys_loop = c0, [None] * CT
    for t in (reversed(range(CT)) if reverse else range(CT)):
        carry, ys_loop[t] = cell(carry, x[t])
    final, ys = cell.scan_projected(c0, cell.project_inputs(x), reverse=reverse)
    np.testing.assert_allclose(ys, jnp.stack(ys_loop), atol=1e-5)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert final._fields[0] == "h"


@pytest.mark.parametrize("mode", CELL_MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_cell_ragged_row_equals_row_alone(mode, reverse):
    cell = _cell(scan_mode=mode)
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    c0 = _perturb_carry(cell.initialize_carry(CB), jax.random.key(2))
    mask = jnp.asarray(np.arange(CT)[:, None] < CLENGTHS[None])
    final, ys = cell.scan_projected(c0, cell.project_inputs(x), mask, reverse=reverse)
    for r, n in enumerate(CLENGTHS):
        row_c0 = jax.tree.map(lambda v, r=r: v[r : r + 1], c0)
        f1, y1 = cell.scan_projected(row_c0, cell.project_inputs(x[:n, r : r + 1]),
                                     reverse=reverse)
        np.testing.assert_allclose(ys[:n, r], y1[:, 0], atol=1e-5)
        assert np.all(np.asarray(ys[n:, r]) == 0)
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(f1)):
            np.testing.assert_allclose(a[r], b[0], atol=1e-5)


def test_cell_in_stacked_bidirectional_layers():
    model = make_rnn(CELL_NAME, CE, CH, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0),
                     **CELL_KW)
    x = jax.random.normal(jax.random.key(1), (CB, CT, CE))
    y = model(x, seq_lengths=jnp.asarray(CLENGTHS))
    assert y.shape == (CB, CT, 2 * CH) and np.all(np.isfinite(np.asarray(y)))
    # row 1 padded == row 1 alone, through both layers and directions
    y1 = model(x[1:2, : CLENGTHS[1]])
    np.testing.assert_allclose(y[1, : CLENGTHS[1]], y1[0], atol=1e-5)
    assert np.all(np.asarray(y[1, CLENGTHS[1]:]) == 0)
    g = nnx.grad(lambda m: jnp.sum(m(x, seq_lengths=jnp.asarray(CLENGTHS)) ** 2))(model)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(g))


def test_cell_diagnostics_hooks():
    cell = _cell()
    carry = _perturb_carry(cell.initialize_carry(CB), jax.random.key(2))
    xp = cell.project_inputs(jax.random.normal(jax.random.key(1), (CB, CE)))
    eps = jnp.zeros((CB, cell.state_width))
    c_ref, y_ref = cell.step_projected(carry, xp)
    c_eps, y_eps = cell.perturbed_step(carry, xp, eps)
    np.testing.assert_allclose(y_eps, y_ref, atol=1e-6)
    for a, b in zip(jax.tree.leaves(c_eps), jax.tree.leaves(c_ref)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # eps reaches the output: d y / d eps is not zero
    jac = jax.jacrev(lambda e: cell.perturbed_step(carry, xp, e)[1])(eps)
    assert float(jnp.max(jnp.abs(jac))) > 0


def test_cell_trains_on_adding_smoke(tmp_path):
    cfg = load_config("configs/adding.py:smoke", [f"model.cell={CELL_NAME}"])
    final = train_and_evaluate(cfg, tmp_path, progress=False)
    assert final and all(np.isfinite(v) for v in final.values() if isinstance(v, float))


def test_cell_gradient_through_time_diagnostics():
    """diagnostics measures ∂L/∂state through the cell's own hooks: (T, B, state_width),
    finite, non-zero on valid steps and zero past each row's length."""
    model = make_rnn(CELL_NAME, CE, CH, rngs=nnx.Rngs(0), **CELL_KW)
    x = jax.random.normal(jax.random.key(1), (CB, CT, CE))

    def loss_fn(m):
        return jnp.sum(m(x, seq_lengths=jnp.asarray(CLENGTHS)) ** 2)

    _, grads, record = hidden_grads(model, loss_fn)
    g = np.asarray(grads["0"])
    assert g.shape == (CT, CB, model.layers[0].cell.state_width)
    assert np.all(np.isfinite(g)) and np.abs(g[0, 0]).max() > 0
    for r, n in enumerate(CLENGTHS):
        assert np.all(g[n:, r] == 0)
    d = diagnose(model, loss_fn)
    assert all(np.all(np.isfinite(v)) for v in d["grad_norms"].values())


def test_cell_matches_float64_transcription():
    """The cell's wiring (dense input map, then the RG-LRU) against np_rglru in float64."""
    cell = _cell()
    x = jax.random.normal(jax.random.key(1), (CT, CB, CE))
    _, ys = cell.scan_projected(cell.initialize_carry(CB), cell.project_inputs(x))
    xin = np.asarray(x, np.float64) @ np.asarray(cell.w_in[...], np.float64) + np.asarray(
        cell.b_in[...], np.float64)
    ref = np_rglru(xin, np.zeros((CB, CH)), cell.params(jnp.float32), np.zeros((CT, CB), bool))
    err = np.max(np.abs(np.asarray(ys) - ref))
    print(f"RGLRUCell vs float64 transcription: {err:.2e}")
    assert err < 1e-5
