"""Tests for rnnjax.nn.linear_scan against a float64 numpy loop and masked_scan."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rnnjax.nn.linear_scan import ScanMode, linear_scan, log_linear_scan
from rnnjax.nn.scan import masked_scan

REAL_MODES = [ScanMode.SEQUENTIAL, ScanMode.ASSOCIATIVE]
ALL_MODES = list(ScanMode)


def ref_scan(a, b, h0, mask=None, reverse=False):
    """Plain float64 loop: h = a h + b on valid steps, carry kept and output 0 on masked."""
    a, b, h = np.float64(a), np.float64(b), np.array(h0, np.float64)
    T = a.shape[0]
    mask = np.ones(a.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    hs = np.zeros_like(b)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        for r in range(a.shape[1]):
            if mask[t, r]:
                h[r] = a[t, r] * h[r] + b[t, r]
                hs[t, r] = h[r]
    return h, hs


def right_padded(lengths, T):
    """``(T, B)`` mask, True for ``t < lengths[b]``."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def random_inputs(seed, T, B, H, dtype=np.float32):
    """``a`` in (0.05, 1) as minGRU's forget coefficients, ``b`` > 0, ``h0`` any sign."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.05, 1.0, (T, B, H)).astype(dtype)
    b = rng.uniform(0.05, 2.0, (T, B, H)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    return a, b, h0


# -- values against the float64 loop ------------------------------------------

def ref_scan_complex(a, b, h0, mask, reverse):
    """The same loop in complex128."""
    a, b, h = np.complex128(a), np.complex128(b), np.array(h0, np.complex128)
    hs = np.zeros_like(b)
    for t in (range(a.shape[0] - 1, -1, -1) if reverse else range(a.shape[0])):
        for r in range(a.shape[1]):
            if mask[t, r]:
                h[r] = a[t, r] * h[r] + b[t, r]
                hs[t, r] = h[r]
    return h, hs


@pytest.mark.parametrize("mode", REAL_MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("reverse", [False, True])
def test_complex_coefficients_match_complex128_loop(mode, reverse):
    """The LRU's recurrence: complex a (|a| < 1, any phase), complex b and h0."""
    T, B, H = 11, 3, 4
    rng = np.random.default_rng(3)
    a = rng.uniform(0.2, 0.99, (T, B, H)) * np.exp(1j * rng.uniform(0, 2 * np.pi, (T, B, H)))
    b = rng.normal(size=(T, B, H)) + 1j * rng.normal(size=(T, B, H))
    h0 = rng.normal(size=(B, H)) + 1j * rng.normal(size=(B, H))
    mask = right_padded([11, 5, 1], T)
    h, hs = linear_scan(jnp.asarray(a, jnp.complex64), jnp.asarray(b, jnp.complex64),
                        jnp.asarray(h0, jnp.complex64), jnp.asarray(mask), reverse=reverse,
                        mode=mode)
    assert h.dtype == hs.dtype == jnp.complex64
    want_h, want_hs = ref_scan_complex(a, b, h0, mask, reverse)
    np.testing.assert_allclose(np.asarray(hs), want_hs, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(h), want_h, atol=2e-5, rtol=2e-5)



@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_every_mode_matches_float64_numpy_loop(reverse, masked):
    T, B, H = 9, 3, 2
    a, b, h0 = random_inputs(0, T, B, H, np.float64)
    b[..., 0] = -b[..., 0]  # the real-space scans must handle b of either sign
    mask = right_padded([9, 4, 1], T) if masked else None
    want_h, want_hs = ref_scan(a, b, h0, mask, reverse)
    with jax.enable_x64(True):
        for mode in REAL_MODES:
            h, hs = linear_scan(a, b, h0, mask, reverse=reverse, mode=mode)
            assert hs.dtype == jnp.float64 and h.dtype == jnp.float64
            np.testing.assert_allclose(hs, want_hs, rtol=1e-12, atol=1e-13, err_msg=str(mode))
            np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-13, err_msg=str(mode))
        b = np.abs(b)
        want_h, want_hs = ref_scan(a, b, h0, mask, reverse)
        for mode in ALL_MODES:
            h, hs = log_linear_scan(np.log(a), np.log(b), h0, mask, reverse=reverse, mode=mode)
            assert hs.dtype == jnp.float64
            np.testing.assert_allclose(hs, want_hs, rtol=1e-11, atol=1e-12, err_msg=str(mode))
            np.testing.assert_allclose(h, want_h, rtol=1e-11, atol=1e-12, err_msg=str(mode))


def test_gradients_match_float64_finite_differences():
    T, B, H = 6, 2, 2
    a, b, h0 = random_inputs(1, T, B, H, np.float64)
    mask = right_padded([6, 3], T)
    w = np.random.default_rng(2).normal(size=(T, B, H))

    def ref_loss(a_, b_, h0_):
        h, hs = ref_scan(a_, b_, h0_, mask, reverse=True)
        return float(np.sum(w * hs) + np.sum(h))

    eps = 1e-6
    coords = [(0, 0, 0), (2, 1, 1), (5, 0, 1), (4, 1, 0)]  # (4, 1) is masked: gradient 0
    with jax.enable_x64(True):
        for mode in ALL_MODES:
            @jax.jit
            def grads(log_a, log_b, h0_, mode=mode):
                def loss(log_a, log_b, h0_):
                    h, hs = log_linear_scan(log_a, log_b, h0_, mask, reverse=True, mode=mode)
                    return jnp.sum(w * hs) + jnp.sum(h)

                return jax.grad(loss, argnums=(0, 1, 2))(log_a, log_b, h0_)

            ga, gb, gh = grads(np.log(a), np.log(b), h0)
            for c in coords:
                for arr, grad in ((a, ga), (b, gb)):
                    up, dn = arr.copy(), arr.copy()
                    # d/d(log x) = x d/dx: perturb in log space to test the log-space gradient.
                    up[c] *= np.exp(eps)
                    dn[c] *= np.exp(-eps)
                    args_up = (up, b, h0) if arr is a else (a, up, h0)
                    args_dn = (dn, b, h0) if arr is a else (a, dn, h0)
                    fd = (ref_loss(*args_up) - ref_loss(*args_dn)) / (2 * eps)
                    np.testing.assert_allclose(grad[c], fd, rtol=1e-6, atol=1e-8,
                                               err_msg=f"{mode} {c}")
            for r in range(B):
                up, dn = h0.copy(), h0.copy()
                up[r, 0] += eps
                dn[r, 0] -= eps
                fd = (ref_loss(a, b, up) - ref_loss(a, b, dn)) / (2 * eps)
                np.testing.assert_allclose(gh[r, 0], fd, rtol=1e-6, atol=1e-8)


# -- the three modes agree in float32, values and gradients --------------------

@functools.partial(jax.jit, static_argnames=("reverse",))
def every_mode_with_grads(a, b, h0, mask, w, reverse):
    """One compile for all modes: {(fn, mode): ((h, hs), grads w.r.t. that fn's inputs)}."""
    out = {}
    la, lb = jnp.log(a), jnp.log(b)
    for fn, args, modes in ((linear_scan, (a, b, h0), REAL_MODES),
                            (log_linear_scan, (la, lb, h0), ALL_MODES)):
        for mode in modes:
            def loss(x, y, z, fn=fn, mode=mode):
                h, hs = fn(x, y, z, mask, reverse=reverse, mode=mode)
                return jnp.sum(w * hs) + jnp.sum(jnp.sin(h)), (h, hs)

            (_, res), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(*args)
            out[fn.__name__, mode.value] = res, grads
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_modes_agree_in_float32_values_and_grads(reverse):
    T, B, H = 13, 4, 3
    a, b, h0 = random_inputs(3, T, B, H)
    mask = right_padded([13, 7, 1, 10], T)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(T, B, H)), jnp.float32)
    out = every_mode_with_grads(a, b, h0, mask, w, reverse)
    want_h, want_hs = ref_scan(a, b, h0, mask, reverse)
    # Gradients are compared with respect to each function's own inputs: real
    # (a, b, h0) for linear_scan, (log a, log b, h0) for log_linear_scan. Turning
    # a log-gradient into a real one divides by a, which would amplify LOG_SPACE's
    # float32 rounding (about 5e-6 absolute) past 1e-5 wherever a ~ 0.05.
    for fn, modes in (("linear_scan", REAL_MODES), ("log_linear_scan", ALL_MODES)):
        (h_ref, hs_ref), grads_ref = out[fn, "sequential"]
        np.testing.assert_allclose(hs_ref, want_hs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(h_ref, want_h, rtol=1e-5, atol=1e-5)
        for mode in modes[1:]:
            (h, hs), grads = out[fn, mode.value]
            assert hs.dtype == jnp.float32
            np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-5, err_msg=str(mode))
            np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5, err_msg=str(mode))
            for g, g_ref in zip(grads, grads_ref):
                assert np.all(np.isfinite(g))
                np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5, err_msg=str(mode))
    # the log-space gradients are the real ones by the chain rule
    (g_la, g_lb, g_h0), (ra, rb, rh0) = (out[f, "sequential"][1]
                                         for f in ("log_linear_scan", "linear_scan"))
    np.testing.assert_allclose(g_la, ra * a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_lb, rb * b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_h0, rh0, rtol=1e-5, atol=1e-5)
    # masked steps get no gradient
    assert np.all(np.asarray(out["log_linear_scan", "log_space"][1][0])[~mask] == 0)


@functools.partial(jax.jit, static_argnames=("reverse",))
def every_mode(a, b, h0, mask, reverse):
    outs = [linear_scan(a, b, h0, mask, reverse=reverse, mode=m) for m in REAL_MODES]
    outs += [log_linear_scan(jnp.log(a), jnp.log(b), h0, mask, reverse=reverse, mode=m)
             for m in ALL_MODES]
    return outs


@settings(max_examples=8, deadline=None)
@given(T=st.integers(1, 37), reverse=st.booleans(), seed=st.integers(0, 2**16))
@example(T=1, reverse=True, seed=0)
@example(T=37, reverse=False, seed=1)
def test_hypothesis_lengths_and_T(T, reverse, seed):
    B, H = 3, 2
    lengths = np.random.default_rng(seed).integers(1, T + 1, size=B)  # each row in [1, T]
    a, b, h0 = random_inputs(seed, T, B, H)
    mask = right_padded(lengths, T)
    want_h, want_hs = ref_scan(a, b, h0, mask, reverse)
    for mode, (h, hs) in zip(REAL_MODES + ALL_MODES, every_mode(a, b, h0, mask, reverse)):
        np.testing.assert_allclose(hs, want_hs, rtol=2e-5, atol=2e-5, err_msg=str(mode))
        np.testing.assert_allclose(h, want_h, rtol=2e-5, atol=2e-5, err_msg=str(mode))
        assert np.all(np.asarray(hs)[~mask] == 0.0)


# -- masking semantics ---------------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
def test_arbitrary_mask_matches_masked_scan(reverse):
    """Holes in the middle of a row, not just right padding: same rule as masked_scan."""
    T, B, H = 8, 3, 2
    a, b, h0 = random_inputs(5, T, B, H)
    mask = np.random.default_rng(6).uniform(size=(T, B)) < 0.6

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    want_h, want_hs = masked_scan(step, jnp.asarray(h0), (a, b), jnp.asarray(mask),
                                  reverse=reverse)
    for mode, (h, hs) in zip(REAL_MODES + ALL_MODES, every_mode(a, b, h0, mask, reverse)):
        np.testing.assert_allclose(hs, want_hs, rtol=1e-5, atol=1e-5, err_msg=str(mode))
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5, err_msg=str(mode))


def test_reverse_starts_at_each_rows_last_valid_step():
    T, H = 6, 2
    lengths = [6, 2, 4]
    a, b, h0 = random_inputs(7, T, 3, H)
    mask = right_padded(lengths, T)
    for _mode, (h, hs) in zip(REAL_MODES + ALL_MODES, every_mode(a, b, h0, mask, True)):
        for r, n in enumerate(lengths):
            # the row alone, truncated to its length, reversed in numpy
            want_h, want_hs = ref_scan(a[:n, r : r + 1], b[:n, r : r + 1], h0[r : r + 1],
                                       reverse=True)
            np.testing.assert_allclose(hs[:n, r], want_hs[:, 0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(h[r], want_h[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_log_space_zero_h0_and_padding_have_finite_gradients(reverse):
    """log 0 must never be taken: zero h0, and padded steps (b = 0) paired in the scan."""
    T, B, H = 5, 2, 2
    a, b, _ = random_inputs(8, T, B, H)
    h0 = np.zeros((B, H), np.float32)
    mask = right_padded([5, 1], T)

    @jax.jit
    def all_grads(la, lb, h0_):
        def loss(la, lb, h0_, mode):
            h, hs = log_linear_scan(la, lb, h0_, mask, reverse=reverse, mode=mode)
            return jnp.sum(hs) + jnp.sum(h)

        return [jax.grad(loss, argnums=(0, 1, 2))(la, lb, h0_, m) for m in ALL_MODES]

    for mode, grads in zip(ALL_MODES, all_grads(np.log(a), np.log(b), h0)):
        for g in grads:
            assert np.all(np.isfinite(g)), mode
        # masked steps contribute nothing, so their log-coefficients get no gradient
        assert np.all(np.asarray(grads[0])[~mask] == 0) and np.all(np.asarray(grads[1])[~mask] == 0)
        # dh0 = sum over valid t of the product of a from the start to t: > 0
        assert np.all(np.asarray(grads[2]) > 0)


# -- dtypes and errors ----------------------------------------------------------

def test_bfloat16_inputs_accumulate_in_float32():
    T, B, H = 64, 2, 8
    a, b, h0 = random_inputs(9, T, B, H)
    a = np.full_like(a, 0.999)  # long memory: per-step bf16 rounding would add up
    a16, b16, h16 = (jnp.asarray(x, jnp.bfloat16) for x in (a, b, h0))
    want_h, want_hs = ref_scan(*(np.asarray(x, np.float64) for x in (a16, b16, h16)))
    for mode in REAL_MODES:
        h, hs = jax.jit(functools.partial(linear_scan, mode=mode))(a16, b16, h16)
        assert hs.dtype == jnp.bfloat16 and h.dtype == jnp.bfloat16
        # within one bf16 rounding of the exact result on the bf16 inputs
        np.testing.assert_allclose(np.float64(hs), want_hs, rtol=2**-8, atol=0)
    la16, lb16 = jnp.log(a16), jnp.log(b16)  # rounded to bf16: the reference uses these
    want_h, want_hs = ref_scan(np.exp(np.float64(la16)), np.exp(np.float64(lb16)), np.float64(h16))
    for mode in ALL_MODES:
        h, hs = jax.jit(functools.partial(log_linear_scan, mode=mode))(la16, lb16, h16)
        assert hs.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.float64(hs), want_hs, rtol=2**-8, atol=0, err_msg=str(mode))


def test_bad_inputs_raise_value_errors():
    a, b, h0 = random_inputs(10, 4, 2, 3)
    with pytest.raises(ValueError, match="log_linear_scan"):
        linear_scan(a, b, h0, mode=ScanMode.LOG_SPACE)
    with pytest.raises(ValueError, match="known"):
        linear_scan(a, b, h0, mode="parallel")
    with pytest.raises(ValueError, match="same"):
        linear_scan(a, b[:, :1], h0)
    with pytest.raises(ValueError, match="h0"):
        linear_scan(a, b, h0[:1])
    with pytest.raises(ValueError, match=r"\(T, B\)"):
        log_linear_scan(a, b, h0, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="T=0"):
        linear_scan(a[:0], b[:0], h0)
    assert ScanMode.parse("Associative") is ScanMode.ASSOCIATIVE
