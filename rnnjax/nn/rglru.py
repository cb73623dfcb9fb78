"""The Real-Gated Linear Recurrent Unit, RG-LRU (De et al. 2024, "Griffin: Mixing Gated
Linear Recurrences with Local Attention", the recurrence of Hawk and Griffin).

A diagonal, real, input-gated linear recurrence. Per channel (width ``H``)::

    r_t = σ(W_a x_t + b_a)                       recurrence gate      (B, H)
    i_t = σ(W_x x_t + b_x)                       input gate           (B, H)
    log a_t = -c · r_t · softplus(Λ)             c = 8;  a_t = σ(-Λ)^(c r_t) in (0, 1]
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t)

``W_a`` and ``W_x`` are **block-diagonal** with ``num_heads`` blocks of ``H/N × H/N``
(each head's gates see only that head's channels), both with a bias.

Parameterisation, as recurrentgemma's ``RGLRU`` (which we checked every detail
against; see docs/cells/linear_families.md):

* the paper writes ``a = σ(Λ)^(c r)``; the code stores ``a_param = -Λ`` and computes
  ``log a = -c r softplus(a_param)`` (since ``log σ(Λ) = -softplus(-Λ)``), so ``a`` is
  formed from its logarithm, never by a power of a number near 1. ``a² = exp(2 log a)``
  likewise.
* ``a_param`` is initialised so that ``σ(Λ) = exp(-softplus(a_param))`` lies on the
  ring ``[min_rad, max_rad] = [0.9, 0.999]`` uniformly in area (:func:`rglru_a_param_init`).
* the normaliser ``sqrt(1 - a²)`` has its derivative clipped at 1000
  (:func:`sqrt_bounded_grad`): as ``a -> 1`` the true derivative ``1/(2 sqrt(1-a²))``
  diverges, and recurrentgemma clips it to keep bfloat16 training finite. We do the same
  so that the gradients match theirs; the forward value is exact.
* ``1 - a²`` is computed as ``-expm1(2 log a)`` here (recurrentgemma: ``1 - exp(2 log a)``):
  with ``a`` near 1 the subtraction loses ``-log10(1-a²)`` digits in float32 and expm1
  does not. The difference from recurrentgemma stays below 1e-6 at the test's sizes.
* **reset**: recurrentgemma resets the state where ``segment_pos == 0`` (packed
  documents): there ``a = 0`` and the normaliser is 1, so ``h_t = i_t ⊙ x_t``. The pure
  functions here take that as an optional ``reset`` (T, B) mask.

This module holds the maths as pure functions on explicit parameters: the gate
function :func:`rglru_coefficients` is the only place the gate maths lives; the step
(:func:`rglru_step`) and the sequence form (:func:`rglru_scan`, on
:func:`rnnjax.nn.linear_scan.linear_scan`) both use it, and so does the cell,
:class:`RGLRUCell` (registered as ``"rglru"``).

The cell: ``project_inputs`` is a dense ``(E, H)`` map with bias (Griffin's ``linear_x``
branch into the recurrence; it also lets ``E != H``), and the recurrence runs on its
output. The carry is :class:`RGLRUState` ``(h,)``: the state is the output. The cell does
**not** reset at ``t = 0``: a carry is a state to continue from (the zero carry by
default), so the first step is normalised by ``sqrt(1 - a²)`` like every other; Griffin's
segment reset (normaliser 1 at a document start) is ``rglru_scan(..., reset=)``. What a
Hawk/Griffin block adds around the RG-LRU (the short conv, the GeLU gate branch, the
output projection) is the block's job.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, register_cell
from rnnjax.nn.linear_scan import ScanMode, linear_scan
from rnnjax.nn.types import Array

__all__ = [
    "RGLRU_C",
    "RGLRUCell",
    "RGLRUParams",
    "RGLRUState",
    "block_diagonal",
    "rglru_a_param_init",
    "rglru_coefficients",
    "rglru_scan",
    "rglru_step",
    "sqrt_bounded_grad",
]

#: The paper's fixed exponent ``c`` on the recurrence gate (Griffin §2.4: "c = 8").
RGLRU_C = 8.0
#: recurrentgemma clips d sqrt(x)/dx at this value (its ``sqrt_bound_derivative(., 1000)``).
SQRT_MAX_GRAD = 1000.0


class RGLRUParams(NamedTuple):
    """RG-LRU parameters, ``N`` heads of ``Hh = H / N`` channels.

    a_param: ``(H,)``, ``-Λ``: ``log a = -c r softplus(a_param)``.
    w_a, w_x: ``(N, Hh, Hh)`` block-diagonal gate weights (recurrence, input).
    b_a, b_x: ``(N, Hh)`` gate biases.
    """

    a_param: Array
    w_a: Array
    b_a: Array
    w_x: Array
    b_x: Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bounded_grad(x: Array, max_grad: float) -> Array:
    """``sqrt(x)`` whose derivative is clipped at ``max_grad`` (where ``x < 1/(4 max_grad²)``).

    Why: ``1 - a²`` goes to 0 as ``a -> 1`` and sqrt's derivative to infinity; the
    RG-LRU's authors clip it (to 1000) so that low-precision training stays finite.
    """
    return jnp.sqrt(x)


def _sqrt_fwd(x, max_grad):
    return jnp.sqrt(x), x


def _sqrt_bwd(max_grad, x, g):
    # d sqrt(u)/du = 1 / (2 sqrt(u)) <= max_grad  <=>  u >= 1 / (4 max_grad²).
    u = jnp.maximum(x, 1.0 / (4.0 * max_grad**2))
    return (g * 0.5 / jnp.sqrt(u),)


sqrt_bounded_grad.defvjp(_sqrt_fwd, _sqrt_bwd)


def block_diagonal(x: Array, w: Array, b: Array) -> Array:
    """``(..., H) -> (..., H)``: an independent ``(Hh, Hh)`` linear map (+ bias) per head.

    ``w`` is ``(N, Hh, Hh)`` (input, output per head), ``b`` ``(N, Hh)``, ``H = N * Hh``;
    head ``n`` owns channels ``n*Hh .. (n+1)*Hh - 1`` (contiguous, as recurrentgemma).
    """
    n, hh, _ = w.shape
    xs = x.reshape(x.shape[:-1] + (n, hh))
    y = jnp.einsum("...ni,nij->...nj", xs, w) + b
    return y.reshape(x.shape)


def rglru_coefficients(
    x: Array, p: RGLRUParams, reset: Array | None = None, c: float = RGLRU_C
) -> tuple[Array, Array]:
    """The gate function: ``(a_t, b_t)`` of ``h_t = a_t h_{t-1} + b_t`` from the inputs.

    Args:
      x: ``(..., H)`` inputs (any leading axes, e.g. ``(T, B, H)`` or ``(B, H)``).
      p: :class:`RGLRUParams`.
      reset: optional bool, ``x.shape[:-1]``: True where a segment starts (the state is
        dropped: ``a = 0``, normaliser 1), as recurrentgemma's ``segment_pos == 0``.
      c: the exponent on the recurrence gate (8 in the paper).

    Returns:
      ``a`` (``(..., H)``, in ``[0, 1]``) and ``b = sqrt(1 - a²) ⊙ i ⊙ x``.
    """
    r = jax.nn.sigmoid(block_diagonal(x, p.w_a, p.b_a))
    i = jax.nn.sigmoid(block_diagonal(x, p.w_x, p.b_x))
    log_a = -c * r * jax.nn.softplus(p.a_param)
    a = jnp.exp(log_a)
    norm = sqrt_bounded_grad(-jnp.expm1(2.0 * log_a), SQRT_MAX_GRAD)
    if reset is not None:
        rs = reset[..., None]
        a = jnp.where(rs, jnp.zeros_like(a), a)
        norm = jnp.where(rs, jnp.ones_like(norm), norm)
    return a, norm * (i * x)


def rglru_step(h: Array, x_t: Array, p: RGLRUParams) -> Array:
    """One step: ``(B, H), (B, H) -> h_t (B, H)``."""
    a, b = rglru_coefficients(x_t, p)
    return a * h + b


def rglru_scan(
    x: Array,
    h0: Array,
    p: RGLRUParams,
    mask: Array | None = None,
    *,
    reset: Array | None = None,
    reverse: bool = False,
    mode: ScanMode | str = ScanMode.ASSOCIATIVE,
    unroll: int = 1,
) -> tuple[Array, Array]:
    """The sequence form: every ``h_t`` of a time-major ``x`` ``(T, B, H)``.

    Gates in float32 at least (sigmoid/softplus in bfloat16 would lose what the float32
    scan keeps). ``mask`` ``(T, B)`` has :func:`linear_scan`'s semantics (masked steps
    keep ``h``, output 0); ``reset`` ``(T, B)`` as :func:`rglru_coefficients`.

    Returns ``(h_last (B, H), hs (T, B, H))`` in ``x``'s dtype.
    """
    ct = jnp.promote_types(x.dtype, jnp.float32)
    a, b = rglru_coefficients(x.astype(ct), jax.tree.map(lambda v: v.astype(ct), p), reset)
    h_last, hs = linear_scan(a, b, h0.astype(ct), mask, reverse=reverse, mode=mode,
                             unroll=unroll)
    return h_last.astype(x.dtype), hs.astype(x.dtype)


def rglru_a_param_init(key: jax.Array, shape, dtype=jnp.float32, min_rad: float = 0.9,
                       max_rad: float = 0.999, eps: float = 1e-8) -> Array:
    """``a_param`` with ``σ(Λ) = exp(-softplus(a_param))`` uniform in area on the ring
    ``[min_rad, max_rad]`` (then ``a_t = σ(Λ)^(c r_t)``): ``softplus(a_param) = -log σ(Λ)``,
    inverted."""
    u = jax.random.uniform(key, shape, jnp.float32)
    log_rad = 0.5 * jnp.log(u * (max_rad**2 - min_rad**2) + min_rad**2 + eps)
    # softplus^{-1}(y) = log(expm1(y)), y = -log_rad > 0.
    return jnp.log(jnp.expm1(-log_rad)).astype(dtype)


class RGLRUState(NamedTuple):
    """The RG-LRU carry: ``h`` ``(B, H)``, the state, which is also the output."""

    h: Array


class RGLRUCell(RecurrentCell):
    """The RG-LRU as an rnnjax cell (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H, the recurrence width; a multiple of ``num_heads``.
      num_heads: N, the number of diagonal blocks of the gate weights (Griffin: the
        attention heads' count).
      scan_mode: ``"associative"`` (parallel over time, default) or ``"sequential"``.
      c: the exponent on the recurrence gate (the paper's 8).
      min_rad, max_rad: the ring on which ``σ(Λ)`` is initialised.
      dtype, param_dtype: as for every cell; the scan runs in float32 at least.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        scan_mode: ScanMode | str = ScanMode.ASSOCIATIVE,
        c: float = RGLRU_C,
        min_rad: float = 0.9,
        max_rad: float = 0.999,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"RGLRUCell: hidden_features ({hidden_features}) must be a multiple "
                             f"of num_heads ({num_heads}) >= 1")
        scan_mode = ScanMode.parse(scan_mode)
        if scan_mode is ScanMode.LOG_SPACE:
            raise ValueError("RGLRUCell: scan_mode='log_space' needs positive inputs; the "
                             "RG-LRU's are signed. Use 'associative' or 'sequential'")
        if not 0.0 < min_rad < max_rad < 1.0:
            raise ValueError(f"RGLRUCell: need 0 < min_rad < max_rad < 1, got {min_rad}, "
                             f"{max_rad}")
        self.num_heads, self.scan_mode, self.c = num_heads, scan_mode, float(c)
        E, H, N = in_features, hidden_features, num_heads
        hh = H // N
        # fan-in normal, as recurrentgemma's BlockDiagonalLinear (fan-in = H/N per head)
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.w_in = nnx.Param(init(rngs.params(), (E, H), param_dtype))
        self.b_in = nnx.Param(jnp.zeros((H,), param_dtype))
        self.a_param = nnx.Param(rglru_a_param_init(rngs.params(), (H,), param_dtype,
                                                    min_rad, max_rad))
        self.w_a = nnx.Param(init(rngs.params(), (N, hh, hh), param_dtype))
        self.b_a = nnx.Param(jnp.zeros((N, hh), param_dtype))
        self.w_x = nnx.Param(init(rngs.params(), (N, hh, hh), param_dtype))
        self.b_x = nnx.Param(jnp.zeros((N, hh), param_dtype))

    def params(self, dtype) -> RGLRUParams:
        """The recurrence's parameters as :class:`RGLRUParams`, in ``dtype``."""
        return RGLRUParams(*(getattr(self, n)[...].astype(dtype)
                             for n in ("a_param", "w_a", "b_a", "w_x", "b_x")))

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., H)``: ``x W_in + b_in``, the recurrence's input."""
        self.check_features(x)
        return self._cast(x) @ self._p("w_in") + self._p("b_in")

    def _coefficients(self, xp: Array) -> tuple[Array, Array]:
        ct = jnp.promote_types(xp.dtype, jnp.float32)
        return rglru_coefficients(xp.astype(ct), self.params(ct), c=self.c)

    def step_projected(self, carry, xp_t):
        a, b = self._coefficients(xp_t)
        h = (a * carry.h.astype(a.dtype) + b)
        return RGLRUState(h.astype(carry.h.dtype)), h.astype(xp_t.dtype)

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """:func:`linear_scan` over ``xp`` ``(T, B, H)`` (``scan_mode``); same contract as
        :meth:`RecurrentCell.scan_projected`. The state is the output, so the final carry
        is ``h`` at each row's last valid step, as the scan returns it."""
        a, b = self._coefficients(xp)
        h_last, hs = linear_scan(a, b, carry.h.astype(a.dtype), mask, reverse=reverse,
                                 mode=self.scan_mode, unroll=unroll, resets=resets)
        return RGLRUState(h_last.astype(carry.h.dtype)), hs.astype(xp.dtype)

    def initialize_carry(self, batch_shape, dtype=None):
        return RGLRUState(self._zeros(batch_shape, dtype))

    def gate_activations(self, carry, xp_t):
        ct = jnp.promote_types(xp_t.dtype, jnp.float32)
        p = self.params(ct)
        x = xp_t.astype(ct)
        return {"r": ("sigmoid", jax.nn.sigmoid(block_diagonal(x, p.w_a, p.b_a))),
                "i": ("sigmoid", jax.nn.sigmoid(block_diagonal(x, p.w_x, p.b_x)))}


register_cell("rglru", RGLRUCell)
