"""Tests for minGRU/minLSTM: a float64 numpy transcription of the paper's equations,
the step form, every scan mode, and the layers (stacked, bidirectional, ragged)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.diagnostics import diagnose, spectral_radii
from rnnjax.nn import (
    MinGRUCell,
    MinLSTMCell,
    Recurrent,
    ScanMode,
    make_cell,
    make_rnn,
)
from rnnjax.nn.min_cells import g, log_g

B, T, E, H = 3, 7, 4, 5
LENGTHS = np.array([7, 3, 1])


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_g(x):
    return np.where(x >= 0, x + 0.5, np_sigmoid(x))


def ref_min_rnn(kind, x, w, bias, h0, lengths, log_space, reverse):
    """Feng et al. 2024, eqs. for minGRU/minLSTM, one row at a time in float64.

    x ``(B, T, E)``; returns ``(h_last (B, H), ys (B, T, H))`` with zeros past each length.
    """
    x, w, bias, h0 = (np.asarray(v, np.float64) for v in (x, w, bias, h0))
    Hh = h0.shape[-1]
    ys = np.zeros(x.shape[:2] + (Hh,))
    h_last = np.zeros_like(h0)
    for r in range(x.shape[0]):
        h = h0[r].copy()
        steps = range(lengths[r])
        for t in (reversed(steps) if reverse else steps):
            k = x[r, t] @ w + bias
            cand = k[-Hh:]
            cand = np_g(cand) if log_space else cand
            if kind == "min_gru":
                z = np_sigmoid(k[:Hh])
                h = (1 - z) * h + z * cand
            else:
                f, i = np_sigmoid(k[:Hh]), np_sigmoid(k[Hh : 2 * Hh])
                h = f / (f + i) * h + i / (f + i) * cand
            ys[r, t] = h
        h_last[r] = h
    return h_last, ys


CLASSES = {"min_gru": MinGRUCell, "min_lstm": MinLSTMCell}


def modes_for(log_space):
    return list(ScanMode) if log_space else [ScanMode.SEQUENTIAL, ScanMode.ASSOCIATIVE]


def build(kind, log_space, mode, seed=0, **kw):
    """Same seed -> same parameters, whatever the mode; a non-zero bias for coverage."""
    return CLASSES[kind](E, H, log_space=log_space, scan_mode=mode, rngs=nnx.Rngs(seed),
                         bias_init=nnx.initializers.normal(0.5), **kw)


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, E)).astype(np.float32) * 1.5
    h0 = rng.normal(size=(B, H)).astype(np.float32)
    return x, h0


# -- g ---------------------------------------------------------------------------

def test_g_is_continuous_positive_and_log_g_matches():
    x = np.concatenate([np.linspace(-30, 30, 601), [-1e-7, 0.0, 1e-7]]).astype(np.float32)
    gx = np.asarray(g(x), np.float64)
    np.testing.assert_allclose(gx, np_g(np.float64(x)), rtol=1e-6)
    assert np.all(gx > 0)
    assert np.all(np.diff(np.asarray(g(np.sort(x)))) >= 0)  # monotone
    # continuity at 0 from both sides, value 0.5
    np.testing.assert_allclose(g(np.float32([-1e-6, 0.0, 1e-6])), [0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(log_g(x), np.log(np_g(np.float64(x))), rtol=1e-6, atol=1e-6)
    # log_g stays finite where g underflows in float32
    assert np.isfinite(log_g(np.float32(-200.0))) and float(log_g(np.float32(-200.0))) < -199
    # one-sided slopes at 0: 1 on the right, sigmoid'(0) = 1/4 on the left, finite at 0
    pts = jnp.float32([-1e-4, 0.0, 1e-4, -0.5, -3.0])
    dg = jax.vmap(jax.grad(g))(pts)
    np.testing.assert_allclose(dg, [0.25, 1.0, 1.0, 0.235004, 0.045177], atol=1e-4)
    dlog_g = jax.vmap(jax.grad(log_g))(pts)  # = g'/g, finite where log(x + 0.5) is not
    np.testing.assert_allclose(dlog_g, dg / np.asarray(g(pts)), rtol=1e-4)


# -- every mode against the paper's equations, and the step form -------------------

@pytest.mark.parametrize("kind", ["min_gru", "min_lstm"])
@pytest.mark.parametrize("log_space", [True, False])
def test_every_mode_and_step_form_match_paper_equations(kind, log_space):
    x, h0 = inputs()
    modes = modes_for(log_space)
    cells = [build(kind, log_space, m) for m in modes]
    w, bias = np.asarray(cells[0].w_ih[...]), np.asarray(cells[0].b_ih[...])

    @jax.jit
    def run_all(x, h0):
        out = []
        for cell in cells:
            for reverse in (False, True):
                layer = Recurrent(cell, reverse=reverse, return_carry=True)
                out.append(layer(x, seq_lengths=jnp.asarray(LENGTHS), initial_carry=h0))
        return out

    results = iter(run_all(x, h0))
    for mode in modes:
        for reverse in (False, True):
            h, y = next(results)
            want_h, want_y = ref_min_rnn(kind, x, w, bias, h0, LENGTHS, log_space, reverse)
            msg = f"{mode} reverse={reverse}"
            np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5, err_msg=msg)
            np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5, err_msg=msg)

    # Step form: a Python loop of cell(carry, x_t) over full-length rows, per mode.
    want_h, want_y = ref_min_rnn(kind, x, w, bias, h0, [T] * B, log_space, False)
    for cell in cells:
        h = jnp.asarray(h0)
        for t in range(T):
            h, y_t = cell(h, x[:, t])
            np.testing.assert_allclose(y_t, want_y[:, t], rtol=1e-5, atol=1e-5)
        h_scan, y_scan = Recurrent(cell, return_carry=True)(x, initial_carry=h0)
        np.testing.assert_allclose(h, h_scan, rtol=1e-5, atol=1e-5, err_msg=str(cell.scan_mode))
        np.testing.assert_allclose(y_scan[:, -1], h, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["min_gru", "min_lstm"])
def test_log_space_equals_real_space_on_the_same_effective_inputs(kind):
    """Real-space cell fed the candidate g(k_h) computes what the log-space cell computes."""
    x, h0 = inputs(2)
    h0 = np.abs(h0)
    xs = jnp.swapaxes(jnp.asarray(x), 0, 1)  # (T, B, E)
    log_cell = build(kind, True, ScanMode.LOG_SPACE)
    real_cell = build(kind, False, ScanMode.ASSOCIATIVE)
    xp = log_cell.project_inputs(xs)
    np.testing.assert_array_equal(xp, real_cell.project_inputs(xs))  # same parameters
    xp_eff = jnp.concatenate([xp[..., :-H], g(xp[..., -H:])], axis=-1)
    h_log, y_log = log_cell.scan_projected(jnp.asarray(h0), xp)
    h_real, y_real = real_cell.scan_projected(jnp.asarray(h0), xp_eff)
    np.testing.assert_allclose(y_log, y_real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_log, h_real, rtol=1e-5, atol=1e-5)


def test_parameter_gradients_agree_across_modes():
    x, h0 = inputs(3)
    mask = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])
    w_out = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, H)), jnp.float32)

    @jax.jit
    def grads_all(x):
        out = []
        for mode in ScanMode:
            cell = build("min_lstm", True, mode)

            def loss(cell):
                return jnp.sum(w_out * Recurrent(cell, reverse=True)(x, mask=mask))

            grads = nnx.grad(loss)(cell)
            out.append((grads["w_ih"][...], grads["b_ih"][...]))
        return out

    (gw0, gb0), *rest = grads_all(x)
    assert float(jnp.abs(gw0).max()) > 1e-3
    for gw, gb in rest:
        np.testing.assert_allclose(gw, gw0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gb, gb0, rtol=1e-5, atol=1e-5)


def test_chunked_scans_compose():
    """The final carry of one chunk, fed to the next, continues the same recurrence."""
    x, h0 = inputs(5)
    cell = build("min_gru", True, ScanMode.LOG_SPACE)
    layer = Recurrent(cell, return_carry=True)
    h_full, y_full = layer(x, initial_carry=h0)
    h_a, y_a = layer(x[:, :3], initial_carry=h0)
    h_b, y_b = layer(x[:, 3:], initial_carry=h_a)
    np.testing.assert_allclose(jnp.concatenate([y_a, y_b], 1), y_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_b, h_full, rtol=1e-5, atol=1e-5)


# -- inside the layers ----------------------------------------------------------------

@pytest.mark.parametrize("kind,mode", [("min_gru", "associative"), ("min_lstm", "log_space")])
def test_stacked_bidirectional_ragged(kind, mode):
    x, _ = inputs(6)
    model = make_rnn(kind, E, H, num_layers=2, bidirectional=True, scan_mode=mode,
                     rngs=nnx.Rngs(0))
    run = jax.jit(lambda x, lengths: model(x, seq_lengths=lengths, return_carry=True))
    carries, y = run(x, LENGTHS)
    assert y.shape == (B, T, 2 * H)
    for r, n in enumerate(LENGTHS):
        assert np.all(np.asarray(y[r, n:]) == 0.0), "padded outputs must be zero"
        # the row alone, truncated to its length, no padding at all
        c_r, y_r = run(x[r : r + 1, :n], np.array([n]))
        np.testing.assert_allclose(y[r : r + 1, :n], y_r, rtol=1e-5, atol=1e-5)
        for (cf, cb), (cf_r, cb_r) in zip(carries, c_r):
            np.testing.assert_allclose(cf[r : r + 1], cf_r, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(cb[r : r + 1], cb_r, rtol=1e-5, atol=1e-5)


# -- construction, dtypes, errors -------------------------------------------------------

def test_registry_parameters_and_dtype():
    cell = make_cell("min_lstm", E, H, rngs=nnx.Rngs(0), scan_mode="sequential")
    assert isinstance(cell, MinLSTMCell) and cell.scan_mode is ScanMode.SEQUENTIAL
    assert cell.log_space and not hasattr(cell, "w_hh") and not hasattr(cell, "b_hh")
    params = nnx.state(cell, nnx.Param)
    assert sum(p.size for p in jax.tree.leaves(params)) == E * 3 * H + 3 * H
    assert isinstance(make_cell("min_gru", E, H, rngs=nnx.Rngs(0)), MinGRUCell)

    x, h0 = inputs(7)
    c32 = build("min_gru", True, ScanMode.ASSOCIATIVE)
    c16 = build("min_gru", True, ScanMode.ASSOCIATIVE, dtype=jnp.bfloat16)
    y32 = Recurrent(c32)(x, seq_lengths=LENGTHS)
    y16 = Recurrent(c16)(x, seq_lengths=LENGTHS)
    assert y16.dtype == jnp.bfloat16 and y32.dtype == jnp.float32
    np.testing.assert_allclose(np.float32(y16), y32, rtol=3e-2, atol=3e-2)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="log_space=True"):
        MinGRUCell(E, H, log_space=False, scan_mode="log_space", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="known"):
        MinLSTMCell(E, H, scan_mode="parallel", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=">= 1"):
        MinGRUCell(E, 0, rngs=nnx.Rngs(0))
    cell = MinGRUCell(E, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="features"):
        cell(cell.initialize_carry(2), jnp.zeros((2, E + 1)))


@pytest.mark.parametrize("name,gates", [("min_gru", {"z": 0}), ("min_lstm", {"f": 0, "i": 1})])
def test_diagnostics_reports_min_cell_gates_from_the_cell_hook(name, gates):
    # gate_activations is the min cells' own: σ of the gate blocks of x W_ih + b_ih, which
    # depend on x alone; padded steps are left out of the fractions.
    rng = np.random.default_rng(20)
    x = (4 * rng.normal(size=(B, T, E))).astype(np.float32)
    model = make_rnn(name, E, H, rngs=nnx.Rngs(21))
    cell = model.layers[0].cell
    d = diagnose(model, lambda m: jnp.sum(m(jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS))))
    sat = d["gate_saturation"]["0"]
    assert set(sat) == set(gates) and spectral_radii(model) == {}
    k = (x.astype(np.float64) @ np.asarray(cell.w_ih[...], np.float64)
         + np.asarray(cell.b_ih[...], np.float64))  # (B, T, G*H)
    valid = (np.arange(T)[None, :] < LENGTHS[:, None])[..., None]
    n = valid.sum() * H
    tol = 1.5 / n  # one activation on the threshold may round either way
    for gate, block in gates.items():
        s = np_sigmoid(k[..., block * H:(block + 1) * H])
        assert sat[gate]["below"] == pytest.approx(float((valid * (s < 0.05)).sum() / n), abs=tol)
        assert sat[gate]["above"] == pytest.approx(float((valid * (s > 0.95)).sum() / n), abs=tol)
    assert sum(s["saturated"] for s in sat.values()) > 0
