"""mLSTM (rnnjax.nn.mlstm) against the authors' ``mlstm_kernels`` torch native kernels,
between its own three forms, and against float64 finite differences.

The reference kernels take ``(B, NH, S, DH)``; rnnjax's functions take ``(B, T, N, D)``;
``_to_ref``/``_from_ref`` swap axes 1 and 2. Shapes are tiny: the CPU is shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.nn.mlstm import (
    MLSTMMemory,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
)

B, N, DK, DV = 2, 2, 4, 3

# Jitted forms, shared by the tests (one compiled program per shape, not every op compiled
# eagerly: docs/performance.md §15).
step_j = jax.jit(mlstm_step)
recurrent_j = jax.jit(mlstm_recurrent)
parallel_j = jax.jit(mlstm_parallel)
chunkwise_j = jax.jit(mlstm_chunkwise, static_argnames="chunk_size")


def _inputs(rng, T, dtype=np.float32, b=B):
    q, k = (rng.standard_normal((b, T, N, DK)).astype(dtype) for _ in range(2))
    v = rng.standard_normal((b, T, N, DV)).astype(dtype)
    # Spread the gate pre-activations so that both the input and the forget term win the
    # max-state in places (the stabiliser's two branches).
    i = (2.0 * rng.standard_normal((b, T, N))).astype(dtype)
    f = (2.0 * rng.standard_normal((b, T, N)) + 1.0).astype(dtype)
    return q, k, v, i, f


def _random_state(rng, dtype=np.float32, b=B):
    return MLSTMMemory(
        jnp.asarray(rng.standard_normal((b, N, DK, DV)), dtype),
        jnp.asarray(rng.standard_normal((b, N, DK)), dtype),
        jnp.asarray(rng.standard_normal((b, N)), dtype),
    )


def _ref_kernel(name):
    mk = pytest.importorskip("mlstm_kernels", reason="pip install mlstm_kernels==2.0.6")
    del mk
    if name == "parallel_stablef":
        from mlstm_kernels.torch.parallel.native_stablef import (
            mlstm_parallel__native_stablef_autograd as fn,
        )
    elif name == "chunkwise":
        from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd as fn
    else:
        from mlstm_kernels.torch.recurrent.native_sequence import (
            mlstm_recurrent_sequence__native_fw as fn,
        )
    return fn


# Each reference kernel beside the rnnjax form that computes the same formula. The stablef
# parallel kernel starts from m = -inf (no history); the others from m = 0.
CASES = {
    "parallel_stablef": lambda *a: mlstm_parallel(
        *a, state=MLSTMMemory(jnp.zeros((B, N, DK, DV)), jnp.zeros((B, N, DK)),
                              jnp.full((B, N), -jnp.inf)))[0],
    "chunkwise": lambda *a: mlstm_chunkwise(*a, chunk_size=4)[0],
    "recurrent": lambda *a: mlstm_recurrent(*a)[0],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_mlstm_kernels_outputs_and_gradients(torch, name):
    ref = _ref_kernel(name)
    rng = np.random.default_rng(0)
    T = 8  # a multiple of the chunk size: the reference chunkwise kernel requires one
    xs = _inputs(rng, T)
    w = rng.standard_normal((B, T, N, DV)).astype(np.float32)  # a random readout for the loss

    kwargs = {"chunk_size": 4} if name == "chunkwise" else {}
    tx = [torch.tensor(np.swapaxes(a, 1, 2).copy(), requires_grad=True) for a in xs]
    h_ref = ref(q=tx[0], k=tx[1], v=tx[2], i=tx[3], f=tx[4], **kwargs)
    (h_ref * torch.tensor(np.swapaxes(w, 1, 2).copy())).sum().backward()
    h_ref = np.swapaxes(h_ref.detach().numpy(), 1, 2)
    g_ref = [np.swapaxes(t.grad.numpy(), 1, 2) for t in tx]

    fn = CASES[name]
    h = jax.jit(fn)(*map(jnp.asarray, xs))
    g = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2, 3, 4)))(
        *map(jnp.asarray, xs))

    err = np.abs(np.asarray(h) - h_ref).max()
    assert err < 1e-5, f"{name}: max |h - h_ref| = {err}"
    for gate, a, r in zip("qkvif", g, g_ref):
        gerr = np.abs(np.asarray(a) - r).max()
        assert gerr < 1e-4, f"{name}: max |d{gate} - d{gate}_ref| = {gerr}"


@pytest.mark.parametrize("T", [1, 7, 12])
def test_step_chunkwise_parallel_agree_from_a_nonzero_state(T):
    """Every chunk size, including ones that do not divide T, gives the recurrence's
    outputs and final state."""
    rng = np.random.default_rng(1)
    xs = tuple(map(jnp.asarray, _inputs(rng, T)))
    s0 = _random_state(rng)

    state, hs = s0, []
    for t in range(T):
        state, h_t = step_j(state, *(a[:, t] for a in xs))
        hs.append(h_t)
    h_step = jnp.stack(hs, axis=1)

    forms = {"recurrent": recurrent_j(*xs, state=s0), "parallel": parallel_j(*xs, state=s0)}
    for c in (1, 2, 3, 5, 64):
        forms[f"chunk{c}"] = chunkwise_j(*xs, state=s0, chunk_size=c)
    for name, (h, s) in forms.items():
        np.testing.assert_allclose(h, h_step, atol=1e-5, rtol=1e-5, err_msg=name)
        # Compare the true (unstabilised) state exp(m) C: m itself may legitimately differ
        # only by rounding, so compare both parts.
        for a, b in zip(s, state):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


def test_masked_steps_leave_state_unchanged_and_output_zero():
    rng = np.random.default_rng(2)
    T = 6
    xs = tuple(map(jnp.asarray, _inputs(rng, T)))
    s0 = _random_state(rng)
    mask = jnp.zeros((B, T), bool)
    for fn in (recurrent_j, lambda *a, **k: chunkwise_j(*a, chunk_size=4, **k)):
        h, s = fn(*xs, state=s0, mask=mask)
        assert np.all(np.asarray(h) == 0)
        for a, b in zip(s, s0):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=12, deadline=None)
@given(T=st.integers(1, 9), chunk=st.integers(1, 4), data=st.data())
def test_ragged_rows_equal_rows_run_alone(T, chunk, data):
    """A row padded to T (mask False after its length) gives its unpadded outputs, zeros on
    the padding, and the state after its own last step."""
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    rng = np.random.default_rng(T * 10 + chunk)
    xs = tuple(map(jnp.asarray, _inputs(rng, T)))
    s0 = _random_state(rng)
    mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
    # Why jit: one compiled program per shape, not an op-by-op compile of every op.
    h, s = chunkwise_j(*xs, state=s0, mask=mask, chunk_size=chunk)
    for b, n in enumerate(lengths):
        row = tuple(a[b:b + 1, :n] for a in xs)
        s0_b = MLSTMMemory(*(a[b:b + 1] for a in s0))
        if n:
            h_b, s_b = recurrent_j(*row, state=s0_b)
            np.testing.assert_allclose(h[b, :n], h_b[0], atol=1e-5, rtol=1e-5)
        else:
            s_b = s0_b
        assert np.all(np.asarray(h[b, n:]) == 0)
        for a, r in zip(s, s_b):
            np.testing.assert_allclose(a[b], r[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
def test_gradients_match_float64_finite_differences(x64, form):
    from jax.test_util import check_grads

    rng = np.random.default_rng(3)
    T = 5
    xs = tuple(jnp.asarray(a) for a in _inputs(rng, T, np.float64, b=1))
    s0 = _random_state(rng, np.float64, b=1)
    mask = jnp.asarray([[True, True, True, True, False]])
    w = jnp.asarray(rng.standard_normal((1, T, N, DV)))

    def loss(q, k, v, i, f, c, n, m):
        st0 = MLSTMMemory(c, n, m)
        if form == "chunkwise":
            h, s = mlstm_chunkwise(q, k, v, i, f, st0, mask, chunk_size=2)
        else:
            h, s = mlstm_recurrent(q, k, v, i, f, st0, mask)
        # Read the final state through its true (unstabilised) value.
        return jnp.sum(h * w) + jnp.sum(jnp.exp(s.m)[..., None, None] * s.c)

    # Jitted: check_grads evaluates the loss, its VJP and the finite differences as programs.
    check_grads(jax.jit(loss), xs + tuple(s0), order=1, modes=["rev"], eps=1e-6, atol=1e-6,
                rtol=1e-6)


# The cell (MLSTMCell) on the protocol, every impl: tests/test_cell_contract.py.
