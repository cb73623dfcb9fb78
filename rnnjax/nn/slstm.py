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

The cell (:class:`SLSTMCell`) is the equations above with a dense input projection
``(E, 4H)`` (xlstm's layer uses head-wise block-diagonal ones, the special case with zeros
off the blocks) and its time loop is the protocol's default :func:`masked_scan` of the step.
The layer's per-head norm and optional causal convolution belong to a block, not the cell.

Cells never import layers, data or training code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, register_cell
from rnnjax.nn.types import Array

__all__ = [
    "SLSTMCell",
    "SLSTMState",
    "multihead_layer_norm",
    "slstm_sequence",
    "slstm_step",
    "zero_state",
]


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


def slstm_step(state: SLSTMState, wx: Array, r: Array,
               compute_dtype=None) -> tuple[SLSTMState, Array]:
    """One sLSTM step.

    Args:
      state: the carry, leaves ``(B, H)``.
      wx: ``(B, 4H)`` the projected input ``W x_t + b``, gate-major ``[i, f, z, o]``,
        each gate's block ``(N, DH)`` head-major.
      r: ``(N, DH, 4, DH)`` the recurrent weights: ``r[n, a, g, e]`` maps unit ``a`` of
        head ``n``'s ``h`` to unit ``e`` of gate ``g`` of the same head.
      compute_dtype: None (everything in the operands' own dtypes), or the dtype (bfloat16)
        that ``h`` is cast to for the recurrent matmul; the pre-activations then go back to
        the state's dtype, so the exponential gates, the stabiliser ``m`` and the
        normaliser ``n`` are computed in float32 (a bfloat16 exponent would be off by up
        to 2^-8 of its size, a relative error of that much times ``|ĩ|`` in ``exp(ĩ)``).

    Returns:
      ``(state, h)`` with ``h`` ``(B, H)`` in the state's dtype.
    """
    h, c, n, m = state
    if compute_dtype is None:
        i, f, z, o = _preactivations(h, wx, r)
    else:
        pre = _preactivations(h.astype(compute_dtype), wx, r)
        i, f, z, o = (p.astype(c.dtype) for p in pre)
    logf_m = jax.nn.log_sigmoid(f) + m
    m_new = jnp.where(n == 0, i, jnp.maximum(i, logf_m))
    ig = jnp.exp(i - m_new)  # <= 1: m_new >= i
    fg = jnp.exp(jnp.minimum(logf_m - m_new, 0.0))  # clip only bites on the first step
    c = fg * c + ig * jnp.tanh(z)
    n = fg * n + ig
    h = jax.nn.sigmoid(o) * c / n
    return SLSTMState(h, c, n, m_new), h


def _preactivations(h: Array, wx: Array, r: Array) -> list[Array]:
    """``[ĩ, f̃, z̃, õ]``, each ``(B, H)``: ``wx + R h`` with ``R`` block-diagonal per head."""
    B, H = h.shape
    N, DH = r.shape[0], r.shape[1]
    # One einsum over heads: (B, N, DH) x (N, DH, 4, DH) -> (B, 4, N, DH), gate-major as wx.
    ry = jnp.einsum("bna,nage->bgne", h.reshape(B, N, DH), r)
    return jnp.split(wx + ry.reshape(B, 4 * H), 4, axis=-1)


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


# ---------------------------------------------------------------------------
# The cell.
# ---------------------------------------------------------------------------
def _forget_bias(num_heads: int, head_dim: int) -> Array:
    """xlstm's default ``"powerlaw_blockdependent"`` forget-gate bias for one block: per
    head, ``5 - 12 (u/(DH-1))^0.3`` for ``u = 0..DH-1``, from +5 (memory of ~150 steps)
    down to -7 (~1 step), so each head starts with a spread of time scales."""
    u = jnp.arange(head_dim) / max(head_dim - 1, 1)
    return jnp.tile(-(-5.0 + 12.0 * u ** 0.3), num_heads)


#: The default initialiser of ``w_ih`` (the classic cells' default too).
_KERNEL_INIT = nnx.initializers.lecun_normal()


class SLSTMCell(RecurrentCell):
    """The sLSTM cell (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H = ``num_heads * DH``.
      num_heads: N; must divide H. The recurrent matrices are block-diagonal with N blocks.
      kernel_init: initialiser of ``w_ih`` ``(E, 4H)``.
      dtype, param_dtype: as for every cell. Under a bfloat16 policy the projections and
        the recurrent matmul run in bfloat16; the gates, ``c, n, m`` and ``h`` of the carry
        in float32 (:func:`slstm_step`); the output ``y`` is bfloat16.

    Parameters: ``w_ih`` ``(E, 4H)`` and ``b_ih`` ``(4H)`` (gate-major ``[i, f, z, o]``),
    ``r`` ``(N, DH, 4, DH)``. ``r`` starts uniform in ``±1/sqrt(H)`` (xlstm's "standard"
    recurrent init; its default is zeros, which would start the cell with no recurrence),
    ``b_ih`` zero except the forget gate's power-law spread (xlstm's default).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 4,
        kernel_init=_KERNEL_INIT,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"SLSTMCell: num_heads={num_heads} must be >= 1 and divide "
                             f"hidden_features={hidden_features}")
        H, N = hidden_features, num_heads
        DH = H // N
        self.num_heads = num_heads
        self.w_ih = nnx.Param(kernel_init(rngs.params(), (in_features, 4 * H), param_dtype))
        bound = 1.0 / H ** 0.5
        self.r = nnx.Param(jax.random.uniform(rngs.params(), (N, DH, 4, DH), param_dtype,
                                              -bound, bound))
        z = jnp.zeros((H,))
        self.b_ih = nnx.Param(jnp.concatenate([z, _forget_bias(N, DH), z, z]).astype(param_dtype))

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 4H)``: ``x w_ih + b_ih``."""
        self.check_features(x)
        return self._cast(x) @ self._p("w_ih") + self._p("b_ih")

    def step_projected(self, carry: SLSTMState, xp_t: Array) -> tuple[SLSTMState, Array]:
        carry, h = slstm_step(carry, xp_t, self._p("r"), self.dtype)
        return carry, self._cast(h)

    def initialize_carry(self, batch_shape, dtype=None) -> SLSTMState:
        z = self._zeros(batch_shape, dtype)
        return SLSTMState(z, z, z, z)

    # The default perturbed_step (eps on h) is right: h is what R feeds back.

    def gate_activations(self, carry, xp_t):
        """``σ(f̃)``, ``tanh(z̃)``, ``σ(õ)``; the exponential input gate has no saturating
        range to report."""
        _, f, z, o = _preactivations(self._cast(carry.h), xp_t, self._p("r"))
        return {"f": ("sigmoid", jax.nn.sigmoid(f)), "z": ("tanh", jnp.tanh(z)),
                "o": ("sigmoid", jax.nn.sigmoid(o))}

    def recurrent_matrices(self) -> dict[str, Array]:
        """Per gate, the dense block-diagonal ``(H, H)`` matrix with ``pre += h @ R_g``."""
        r = self._p("r")
        return {f"r_{g}": jax.scipy.linalg.block_diag(*(r[n, :, k, :] for n in range(r.shape[0])))
                for k, g in enumerate("ifzo")}


register_cell("slstm", SLSTMCell)
