"""The mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): a matrix memory
with an exponential input gate and a covariance update rule, in three equivalent forms.

Per head (``N`` heads, key width ``DK``, value width ``DV``), with pre-activations
``i_t``, ``f_t`` (scalars per head) and ``q_t, k_t`` ``(DK,)``, ``v_t`` ``(DV,)``::

    C_t = f_t C_{t-1} + i_t k_t v_tᵀ          (DK, DV)   the matrix memory
    n_t = f_t n_{t-1} + i_t k_t               (DK,)      the normaliser
    h_t = C_tᵀ q̂_t / max(|n_tᵀ q̂_t|, 1)      (DV,)      q̂ = q / sqrt(DK)

with ``f_t = sigmoid(f̃_t)`` and ``i_t = exp(ĩ_t)``. The exponential input gate overflows
unless the memory is kept in a rescaled ("stabilised") form: a max-state ``m_t``
(a log-scale per head) is carried and ``(C, n)`` are stored divided by ``exp(m_t)``::

    m_t = max(log f_t + m_{t-1}, ĩ_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(ĩ_t - m_t) k_t v_tᵀ
    n_t = (same weights) n_{t-1}, k_t
    h_t = C_tᵀ q̂_t / (max(|n_tᵀ q̂_t|, exp(-m_t)) + eps)

The rescaling cancels between numerator and denominator, so ``h`` does not depend on the
choice of ``m`` except through ``eps`` (``1e-6``, added in the stabilised space as the
``mlstm_kernels`` package does). As in that package the initial state is ``C = 0``,
``n = 0``, ``m = 0``; its fully parallel kernel instead starts from ``m = -inf``
(no history), which :func:`mlstm_parallel` accepts as an initial state too.

The three forms, all on batch-major ``(B, T, N, D)`` arrays with gates ``(B, T, N)``:

* :func:`mlstm_step` / :func:`mlstm_recurrent`: the recurrence above, one step at a time
  (decoding; ``O(T)`` sequential steps, ``O(DK DV)`` state);
* :func:`mlstm_chunkwise`: chunks of ``C`` steps; a ``lax.scan`` over chunks carries
  ``(C, n, m)`` and each chunk's outputs are a ``(C, C)`` masked quadratic form plus the
  incoming state's contribution. ``C = 1`` is the recurrence, ``C = T`` the parallel form;
  in between it trades ``T/C`` sequential steps for ``O(T C)`` work;
* :func:`mlstm_parallel`: one chunk of length ``T``.

Masking (ragged lengths): where ``mask`` is False the gates are set to ``ĩ = -inf``,
``log f = 0``, which leaves ``(C, n, m)`` exactly unchanged (``m_t = max(m_{t-1}, -inf)``,
``exp(0) = 1``, ``exp(-inf) = 0``), so one code path serves padding inside the last chunk
and ragged batches. Outputs at masked steps are zero.

This module holds only the maths; it must never import layers, data or training code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array

__all__ = [
    "MLSTMMemory",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
    "zero_memory",
]

EPS = 1e-6


class MLSTMMemory(NamedTuple):
    """The stabilised mLSTM state: ``c`` ``(B, N, DK, DV)``, ``n`` ``(B, N, DK)``,
    ``m`` ``(B, N)``; the true memory is ``exp(m) c``, ``exp(m) n``."""

    c: Array
    n: Array
    m: Array


def zero_memory(batch: int, num_heads: int, dk: int, dv: int, dtype=jnp.float32) -> MLSTMMemory:
    """The ``mlstm_kernels`` initial state: ``C = 0``, ``n = 0``, ``m = 0``."""
    return MLSTMMemory(
        jnp.zeros((batch, num_heads, dk, dv), dtype),
        jnp.zeros((batch, num_heads, dk), dtype),
        jnp.zeros((batch, num_heads), dtype),
    )


def _masked_gates(i: Array, f: Array, mask: Array | None) -> tuple[Array, Array]:
    """``(ĩ, log f)`` ``(B, T, N)`` with masked steps turned into identity steps
    (``ĩ = -inf``, ``log f = 0``); ``mask`` is ``(B, T)`` bool or None."""
    logf = jax.nn.log_sigmoid(f)
    if mask is None:
        return i, logf
    m = mask[..., None]
    return jnp.where(m, i, -jnp.inf), jnp.where(m, logf, 0.0)


def mlstm_step(
    state: MLSTMMemory, q: Array, k: Array, v: Array, i: Array, f: Array, *, eps: float = EPS
) -> tuple[MLSTMMemory, Array]:
    """One recurrent step.

    Args:
      state: the carry (see :class:`MLSTMMemory`).
      q, k: ``(B, N, DK)``; v: ``(B, N, DV)``; i, f: ``(B, N)`` gate pre-activations.

    Returns:
      ``(state, h)`` with ``h`` ``(B, N, DV)``.
    """
    return _step_log(state, q, k, v, i, jax.nn.log_sigmoid(f), eps)


def _step_log(state, q, k, v, i, logf, eps):
    c, n, m = state
    m_new = jnp.maximum(logf + m, i)
    fa = jnp.exp(logf + m - m_new)  # (B, N), <= 1 by construction of m_new
    ia = jnp.exp(i - m_new)
    c = fa[..., None, None] * c + ia[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = fa[..., None] * n + ia[..., None] * k
    qs = q * (q.shape[-1] ** -0.5)
    num = jnp.einsum("bnd,bnde->bne", qs, c)
    den = jnp.einsum("bnd,bnd->bn", qs, n)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_new)) + eps)[..., None]
    return MLSTMMemory(c, n, m_new), h


def mlstm_recurrent(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The recurrence as a ``lax.scan`` of :func:`mlstm_step`.

    Args:
      q, k: ``(B, T, N, DK)``; v: ``(B, T, N, DV)``; i, f: ``(B, T, N)``.
      state: initial :class:`MLSTMMemory`; None means :func:`zero_memory`.
      mask: ``(B, T)`` bool, True where a step is valid; None means all valid.

    Returns:
      ``(h, final_state)`` with ``h`` ``(B, T, N, DV)``.
    """
    B, _, N, DK = q.shape
    if state is None:
        state = zero_memory(B, N, DK, v.shape[-1], q.dtype)
    i, logf = _masked_gates(i, f, mask)

    def body(s, xs):
        return _step_log(s, *xs, eps)

    # (B, T, ...) -> (T, B, ...): lax.scan runs over the leading axis.
    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, i, logf))
    state, h = jax.lax.scan(body, state, xs)
    h = jnp.moveaxis(h, 0, 1)
    if mask is not None:
        h = jnp.where(mask[..., None, None], h, 0.0)
    return h, state


def _chunk(state: MLSTMMemory, q, k, v, i, logf, eps) -> tuple[MLSTMMemory, Array]:
    """Outputs of one chunk of ``L`` steps and the state after it.

    ``q, k`` ``(B, L, N, DK)``, ``v`` ``(B, L, N, DV)``, ``i, logf`` ``(B, L, N)``;
    ``state`` is the state before the chunk. Returns ``(state_after, h (B, L, N, DV))``.
    """
    c, n, m = state
    L = q.shape[1]
    scale = q.shape[-1] ** -0.5
    b = jnp.cumsum(logf, axis=1)  # (B, L, N): log of prod f over steps 1..t of the chunk
    # log weight of step s's write in step t's memory (s <= t): sum_{s<r<=t} log f_r + ĩ_s.
    log_d = b[:, :, None, :] - b[:, None, :, :] + i[:, None, :, :]  # (B, L_t, L_s, N)
    causal = jnp.tril(jnp.ones((L, L), bool))[None, :, :, None]
    log_d = jnp.where(causal, log_d, -jnp.inf)
    m_inter = b + m[:, None, :]  # (B, L, N): the log weight of the incoming state at step t
    # m_t of the recurrence, i.e. max(m_inter, max_s log_d); each row has s = t, but that
    # entry is -inf on a masked step, hence the max with m_inter which is always finite.
    m_t = jnp.maximum(m_inter, jnp.max(log_d, axis=2))
    d = jnp.exp(log_d - m_t[:, :, None, :])
    w = jnp.einsum("btnd,bsnd->btsn", q, k) * scale * d  # (B, L_t, L_s, N)
    q_in = q * (scale * jnp.exp(m_inter - m_t))[..., None]  # q scaled for the incoming state
    num = jnp.einsum("btnd,bnde->btne", q_in, c) + jnp.einsum("btsn,bsne->btne", w, v)
    den = jnp.einsum("btnd,bnd->btn", q_in, n) + jnp.sum(w, axis=2)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_t)) + eps)[..., None]

    # The state after the chunk: the incoming state decays by exp(g), step s's write by
    # exp(g - b_s + ĩ_s); rescale everything to the new max-state.
    g = b[:, -1]  # (B, N)
    a = g[:, None, :] - b + i  # (B, L, N)
    m_new = jnp.maximum(g + m, jnp.max(a, axis=1))
    decay = jnp.exp(g + m - m_new)
    k_w = k * jnp.exp(a - m_new[:, None, :])[..., None]
    c = decay[..., None, None] * c + jnp.einsum("bsnd,bsne->bnde", k_w, v)
    n = decay[..., None] * n + jnp.sum(k_w, axis=1)
    return MLSTMMemory(c, n, m_new), h


def mlstm_chunkwise(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, chunk_size: int = 64, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The chunkwise-parallel form: ``lax.scan`` over chunks of ``chunk_size`` steps.

    Same arguments and result as :func:`mlstm_recurrent`. ``T`` need not be a multiple of
    ``chunk_size``: the tail is padded with masked (identity) steps, which leave the
    state unchanged, so the final state is that after step ``T``.
    """
    if chunk_size < 1:
        raise ValueError(f"mlstm_chunkwise: chunk_size must be >= 1, got {chunk_size}")
    B, T, N, DK = q.shape
    if state is None:
        state = zero_memory(B, N, DK, v.shape[-1], q.dtype)
    L = min(chunk_size, T)
    pad = (-T) % L
    if pad:
        valid = jnp.ones((B, T), bool) if mask is None else mask
        mask = jnp.pad(valid, ((0, 0), (0, pad)))
        q, k, v, i, f = (jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
                         for a in (q, k, v, i, f))
    i_m, logf = _masked_gates(i, f, mask)
    nc = (T + pad) // L
    # (B, NC*L, ...) -> (NC, B, L, ...): the scan runs over the chunk axis.
    chunks = tuple(jnp.moveaxis(a.reshape((B, nc, L) + a.shape[2:]), 1, 0)
                   for a in (q, k, v, i_m, logf))
    if nc == 1:  # no loop needed: the parallel form
        state, h = _chunk(state, *(a[0] for a in chunks), eps)
        h = h[:, None]
    else:
        state, h = jax.lax.scan(lambda s, xs: _chunk(s, *xs, eps), state, chunks)
        h = jnp.moveaxis(h, 0, 1)
    h = h.reshape((B, nc * L) + h.shape[3:])[:, :T]
    if mask is not None:
        h = jnp.where(mask[:, :T, None, None], h, 0.0)
    return h, state


def mlstm_parallel(
    q: Array, k: Array, v: Array, i: Array, f: Array, state: MLSTMMemory | None = None,
    mask: Array | None = None, *, eps: float = EPS,
) -> tuple[Array, MLSTMMemory]:
    """The fully parallel (quadratic in ``T``) form: one chunk of length ``T``.

    Same arguments and result as :func:`mlstm_recurrent`. With
    ``state = MLSTMMemory(0, 0, -inf)`` it is the ``mlstm_kernels`` "stablef" parallel
    kernel, which has no initial state.
    """
    return mlstm_chunkwise(q, k, v, i, f, state, mask, chunk_size=q.shape[1], eps=eps)
