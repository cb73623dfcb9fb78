"""The sLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): a scalar memory
with exponential gating, a normaliser state and a stabiliser state, and block-diagonal
(multi-head) recurrent matrices.

Per unit, with pre-activations ``ĩ, f̃, z̃, õ = W x_t + R h_{t-1} + b`` (``R``
block-diagonal: ``N`` heads of width ``DH = H / N``, each head's gates read only that
head's ``h``)::

    m_t = max(ĩ_t, log σ(f̃_t) + m_{t-1})        (m_1 = ĩ_1: no history yet)
    i_t = exp(ĩ_t - m_t)                         the stabilised exponential input gate
    f_t = exp(log σ(f̃_t) + m_{t-1} - m_t)        the stabilised sigmoid forget gate
    c_t = f_t c_{t-1} + i_t tanh(z̃_t)
    n_t = f_t n_{t-1} + i_t
    h_t = σ(õ_t) c_t / n_t

As in ``xlstm``'s vanilla backend (``xlstm/blocks/slstm/src/vanilla/slstm.py``): gate order
``i, f, z, o``, gate-major pre-activations ``(B, 4, N, DH)`` flattened to ``(B, 4H)``, and
the first step sets ``m = ĩ``. That choice keeps ``n_t >= 1`` for ever (one of the two
gates is exactly 1 at every step), so ``c/n`` never divides by a denormal. The package
detects the first step as "``n`` is all zeros"; here the test is per element (``n == 0``,
true only before a unit's first step, since afterwards ``n >= 1``). The package also clips
``f_t`` at 1, which only matters on that first step, where ``exp(log σ(f̃) + 0 - ĩ)`` can
overflow for ``ĩ < -88``; here the exponent is clipped at 0 instead, which is the same value
without the overflow (``inf * 0`` in the gradient).

The sequence form is a plain ``lax.scan`` (a fused loop): the input projection is hoisted
out of it and the per-step recurrent matmul is one einsum over heads.

``multihead_layer_norm`` is the per-head normalisation ``xlstm``'s ``sLSTMLayer`` puts on
the cell's output (group norm with ``N`` groups, weight ``1 + w``, no bias).

This module holds only the maths; it must never import layers, data or training code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array

__all__ = ["SLSTMState", "multihead_layer_norm", "slstm_sequence", "slstm_step", "zero_state"]


class SLSTMState(NamedTuple):
    """The sLSTM carry: output ``h``, cell ``c``, normaliser ``n``, stabiliser ``m``;
    each ``(B, H)``. ``h`` first, so pooling and bridges read it as the hidden state."""

    h: Array
    c: Array
    n: Array
    m: Array


def zero_state(batch: int, hidden: int, dtype=jnp.float32) -> SLSTMState:
    z = jnp.zeros((batch, hidden), dtype)
    return SLSTMState(z, z, z, z)


def slstm_step(state: SLSTMState, wx: Array, r: Array) -> tuple[SLSTMState, Array]:
    """One sLSTM step.

    Args:
      state: the carry, leaves ``(B, H)``.
      wx: ``(B, 4H)`` the projected input ``W x_t + b``, gate-major ``[i, f, z, o]``,
        each gate's block ``(N, DH)`` head-major.
      r: ``(N, DH, 4, DH)`` the recurrent weights: ``r[n, a, g, e]`` maps unit ``a`` of
        head ``n``'s ``h`` to unit ``e`` of gate ``g`` of the same head.

    Returns:
      ``(state, h)`` with ``h`` ``(B, H)``.
    """
    h, c, n, m = state
    B, H = h.shape
    N, DH = r.shape[0], r.shape[1]
    ry = jnp.einsum("bna,ngae->bgne", h.reshape(B, N, DH), jnp.swapaxes(r, 1, 2))
    raw = wx + ry.reshape(B, 4 * H)
    i, f, z, o = jnp.split(raw, 4, axis=-1)
    logf_m = jax.nn.log_sigmoid(f) + m
    m_new = jnp.where(n == 0, i, jnp.maximum(i, logf_m))
    ig = jnp.exp(i - m_new)  # <= 1: m_new >= i
    fg = jnp.exp(jnp.minimum(logf_m - m_new, 0.0))  # clip only bites on the first step
    c = fg * c + ig * jnp.tanh(z)
    n = fg * n + ig
    h = jax.nn.sigmoid(o) * c / n
    return SLSTMState(h, c, n, m_new), h


def slstm_sequence(
    wx: Array, r: Array, state: SLSTMState | None = None
) -> tuple[Array, SLSTMState]:
    """The sLSTM over a sequence: a ``lax.scan`` of :func:`slstm_step`.

    Args:
      wx: ``(B, T, 4H)`` projected inputs (see :func:`slstm_step`).
      r: ``(N, DH, 4, DH)`` recurrent weights.
      state: the initial carry; None means zeros.

    Returns:
      ``(h, final_state)`` with ``h`` ``(B, T, H)``.
    """
    B, _, G4 = wx.shape
    if state is None:
        state = zero_state(B, G4 // 4, wx.dtype)
    state, h = jax.lax.scan(lambda s, x: slstm_step(s, x, r), state, jnp.moveaxis(wx, 1, 0))
    return jnp.moveaxis(h, 0, 1), state


def multihead_layer_norm(y: Array, weight: Array | None, num_heads: int,
                         eps: float = 1e-5) -> Array:
    """Per-head layer norm of ``y`` ``(..., H)``: each head's ``DH`` units are normalised
    to zero mean and unit variance (biased variance), then scaled by ``1 + weight``
    ``(H,)`` (the "residual" weight of ``xlstm``'s ``MultiHeadLayerNorm``, so a zero
    weight is the identity scale)."""
    shape = y.shape
    yh = y.reshape(shape[:-1] + (num_heads, -1))
    mu = jnp.mean(yh, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(yh - mu), axis=-1, keepdims=True)
    out = ((yh - mu) * jax.lax.rsqrt(var + eps)).reshape(shape)
    return out if weight is None else out * (1.0 + weight)
