"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2
with Delta Rule"): the gated delta rule as a recurrence on a matrix memory.

Per head, with key width ``Dk`` and value width ``Dv``, the state ``S`` is ``(Dk, Dv)``
(the transpose of the paper's ``(Dv, Dk)``, as flash-linear-attention stores it)::

    S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ        (paper: S_t = S_{t-1} α_t
    o_t = S_tᵀ q_t                                               (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ)

Equivalently (the "delta" form): decay, read what the memory holds for ``k_t``, and
write a ``β_t``-sized step of the error::

    S' = α_t S_{t-1};   u_t = β_t (v_t - S'ᵀ k_t);   S_t = S' + k_t u_tᵀ

``q, k`` are L2-normalised per head (the paper, §3.3: keys of unit norm keep the
transition ``I - β k kᵀ`` a contraction for ``β in (0, 1)``), and ``q`` is scaled by
``Dk^-1/2`` (flash-linear-attention's default); the cell does both before calling the
functions here. ``β_t = σ(·) in (0, 1)``, ``α_t = exp(g_t)`` with the Mamba-2 gate
``g_t = -exp(A_log) · softplus(a_t + dt_bias) <= 0``, one per head and step.

Two evaluations of the same numbers:

==============  ==========================================================================
sequential      :func:`gdn_sequential`: ``lax.scan`` of the delta form, ``O(T Dk Dv)``.
chunked         :func:`gdn_chunked`: chunks of ``C`` steps. Inside a chunk starting from
                ``S_0``, with ``γ_t = exp(g_1 + .. + g_t)`` and ``Γ_ts = γ_t / γ_s``,
                unrolling gives ``S_t = γ_t S_0 + Σ_{s<=t} Γ_ts k_s u_sᵀ`` and
                ``u = T (diag(β) V - diag(β γ) K S_0)`` with ``T = (I + A)^-1``,
                ``A_ts = β_t Γ_ts k_tᵀ k_s`` for ``s < t`` (strictly lower triangular):
                the UT transform / WY representation of the product of Householder-like
                factors. ``U = T diag(β) V`` and ``W = T diag(βγ) K`` need no state, so
                they are computed for all chunks in parallel (one unit-triangular solve
                each); only ``u = U - W S_0``, ``S_C = γ_C S_0 + Σ_s Γ_Cs k_s u_sᵀ`` pass
                sequentially over ``T/C`` chunks; the outputs
                ``o = diag(γ) Q S_0 + (Q Kᵀ ∘ Γ ∘ tril) u`` are parallel again.
==============  ==========================================================================

All ratios ``Γ_ts`` are formed as ``exp(cumsum g_t - cumsum g_s)`` with ``s <= t`` only
(masked before ``exp``), so every factor is ``<= 1`` and no ``1/γ`` ever overflows.

Layout: time-major, ``q, k (T, B, Nh, Dk)``, ``v (T, B, Nh, Dv)``, ``g, beta (T, B, Nh)``,
state ``(B, Nh, Dk, Dv)``; compute in float32 at least. ``mask (T, B)`` as
:func:`rnnjax.nn.scan.masked_scan`: a masked step is ``g = 0, β = 0`` (no decay, no
write: the state is unchanged) and outputs zero. ``reverse`` flips time. A padded tail
(``T`` not a multiple of ``C``) is the same identity step.

The cell, :class:`GatedDeltaNetCell` (registered as ``"gated_deltanet"``): one input
projection to ``q, k`` (``Nh Dk`` each), ``v`` (``H = Nh Dv``), the gate's ``a`` and ``β``'s
pre-activation (``Nh`` each); ``g`` and ``dt_bias``/``A_log`` as Mamba-2's (shared
initialisation from :mod:`rnnjax.nn.ssd`), output ``o`` flattened to ``(B, H)``. The short
convolutions on ``q, k, v`` and the gated RMSNorm on the output are the block's job.

This module must never import a layer or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, register_cell
from rnnjax.nn.ssd import dt_bias_init, last_valid
from rnnjax.nn.types import Array

__all__ = ["GDNState", "GatedDeltaNetCell", "gdn_chunked", "gdn_sequential", "gdn_step",
           "l2_normalize", "unit_lower_solve"]


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """``x / sqrt(|x|² + eps)`` over the last axis (eps keeps a zero vector's gradient finite)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _prepare(q, k, v, g, beta, S0, mask, reverse):
    ct = jnp.promote_types(jnp.result_type(q, k, v, g, beta), jnp.float32)
    q, k, v, g, beta, S0 = (a.astype(ct) for a in (q, k, v, g, beta, S0))
    if mask is not None:
        m = mask[:, :, None]
        g = jnp.where(m, g, 0.0)
        beta = jnp.where(m, beta, 0.0)
    if reverse:
        q, k, v, g, beta = (jnp.flip(a, 0) for a in (q, k, v, g, beta))
    return q, k, v, g, beta, S0


def _finish(o, S, v, mask, reverse):
    if reverse:
        o = jnp.flip(o, 0)
    if mask is not None:
        o = jnp.where(mask[:, :, None, None], o, 0.0)
    return S.astype(v.dtype), o.astype(v.dtype)


def gdn_step(S: Array, q_t, k_t, v_t, g_t, beta_t) -> tuple[Array, Array]:
    """One step of the delta form on ``S (B, Nh, Dk, Dv)``; returns ``(S_t, o_t (B, Nh, Dv))``."""
    S = jnp.exp(g_t)[..., None, None] * S
    u = beta_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", S, k_t))
    S = S + k_t[..., :, None] * u[..., None, :]
    return S, jnp.einsum("bhkv,bhk->bhv", S, q_t)


def gdn_sequential(q, k, v, g, beta, S0, mask=None, *, reverse=False, unroll=1):
    """The recurrence, one step at a time.

    Returns ``(S_last (B, Nh, Dk, Dv), o (T, B, Nh, Dv))``.
    """
    q, k, v_, g, beta, S0 = _prepare(q, k, v, g, beta, S0, mask, reverse)

    def step(S, inp):
        return gdn_step(S, *inp)

    S, o = jax.lax.scan(step, S0, (q, k, v_, g, beta), unroll=unroll)
    return _finish(o, S, v, mask, reverse)


def _forward_substitution(A: Array, b: Array) -> Array:
    """``X`` with ``(I + A) X = b``, ``A (..., C, C)`` strictly lower triangular, ``b (..., C, D)``:
    one row per step, ``x_i = b_i - Σ_{j<i} A_ij x_j`` (rows ``>= i`` of ``X`` are still zero)."""
    def row(i, X):
        a_i = jax.lax.dynamic_index_in_dim(A, i, axis=-2, keepdims=False)
        b_i = jax.lax.dynamic_index_in_dim(b, i, axis=-2, keepdims=False)
        x_i = b_i - jnp.einsum("...s,...sd->...d", a_i, X)
        return jax.lax.dynamic_update_index_in_dim(X, x_i, i, axis=-2)

    return jax.lax.fori_loop(0, A.shape[-1], row, jnp.zeros_like(b))


def unit_lower_solve(A: Array, b: Array) -> Array:
    """Solves ``(I + A) X = b`` for a strictly lower-triangular ``A (..., C, C)``.

    Not ``jax.lax.linalg.triangular_solve``: on CPU that is jaxlib's LAPACK custom call,
    which splits its batch over XLA's intra-op thread pool and waits for the pieces; when
    XLA runs two such solves at once (the forward and a transposed one in a train step)
    on a pool of two threads, each waits for work only the other's thread could run, and
    the step hangs at 0% CPU (seen on this 2-core machine at the MQAR shape B=32, T=64,
    width 64; docs/performance.md). Plain forward substitution is pure XLA on every
    backend. ``lax.custom_linear_solve`` differentiates it implicitly (forward and reverse
    mode, no per-row residuals): the transposed solve ``(I + Aᵀ) Y = c`` is the same
    substitution with both axes of ``A`` and the rows of ``c`` reversed.
    """
    def matvec(x):  # only A's strict lower part is read, as by the solves
        return x + jnp.einsum("...ts,...sd->...td", jnp.tril(A, -1), x)

    def solve(_, rhs):
        return _forward_substitution(A, rhs)

    def transpose_solve(_, rhs):
        flipped = jnp.flip(jnp.swapaxes(A, -1, -2), (-2, -1))
        return jnp.flip(_forward_substitution(flipped, jnp.flip(rhs, -2)), -2)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)


def gdn_chunked(q, k, v, g, beta, S0, mask=None, *, chunk_size=64, reverse=False):
    """The chunked (WY / UT-transform) form, see the module docstring. Any ``T``.

    Returns ``(S_last, o)`` as :func:`gdn_sequential`.
    """
    if chunk_size < 1:
        raise ValueError(f"gdn_chunked: chunk_size must be >= 1, got {chunk_size}")
    q, k, v_, g, beta, S0 = _prepare(q, k, v, g, beta, S0, mask, reverse)
    t = q.shape[0]
    c = min(chunk_size, t)
    nc = -(-t // c)
    pad = nc * c - t

    def chunks(a):
        # (T, B, Nh, ...) -> (nc, B, Nh, C, ...): head-major inside a chunk for the matmuls.
        # Padding is g = 0, β = 0: the identity step.
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        a = a.reshape((nc, c) + a.shape[1:])
        return jnp.moveaxis(a, 1, 3)

    q, k, v_, g, beta = (chunks(a) for a in (q, k, v_, g, beta))
    cs = jnp.cumsum(g, axis=-1)  # (nc, B, Nh, C): log γ_t
    lower = jnp.tril(jnp.ones((c, c), bool))
    strict = jnp.tril(jnp.ones((c, c), bool), k=-1)
    # Γ_ts = γ_t / γ_s for s <= t; masked to 0 before exp so no exp(positive) is formed.
    diff = cs[..., :, None] - cs[..., None, :]
    gamma_ts = jnp.exp(jnp.where(lower, diff, -jnp.inf))  # (nc, B, Nh, C, C)

    kk = jnp.einsum("...tk,...sk->...ts", k, k)
    A = jnp.where(strict, beta[..., :, None] * gamma_ts * kk, 0.0)
    rhs = jnp.concatenate([beta[..., None] * v_,
                           (beta * jnp.exp(cs))[..., None] * k], axis=-1)
    X = unit_lower_solve(A, rhs)
    dv = v_.shape[-1]
    U, W = X[..., :dv], X[..., dv:]  # (nc, B, Nh, C, Dv), (nc, B, Nh, C, Dk)
    to_end = gamma_ts[..., -1, :]  # Γ_Cs: (nc, B, Nh, C)
    gamma_end = jnp.exp(cs[..., -1])  # γ_C: (nc, B, Nh)

    def pass_state(S, inp):
        U_c, W_c, k_c, to_end_c, gamma_end_c = inp
        u = U_c - jnp.einsum("bhsk,bhkv->bhsv", W_c, S)
        S_next = (gamma_end_c[..., None, None] * S
                  + jnp.einsum("bhsk,bhs,bhsv->bhkv", k_c, to_end_c, u))
        return S_next, (u, S)

    S_last, (u, S_in) = jax.lax.scan(pass_state, S0, (U, W, k, to_end, gamma_end))

    qk = jnp.where(lower, jnp.einsum("...tk,...sk->...ts", q, k) * gamma_ts, 0.0)
    o = (jnp.exp(cs)[..., None] * jnp.einsum("...tk,...kv->...tv", q, S_in)
         + jnp.einsum("...ts,...sv->...tv", qk, u))  # (nc, B, Nh, C, Dv)
    o = jnp.moveaxis(o, 3, 1).reshape((nc * c,) + o.shape[1:3] + (dv,))[:t]
    return _finish(o, S_last, v, mask, reverse)


SCAN_MODES = ("chunked", "sequential")


class GDNState(NamedTuple):
    """The Gated DeltaNet carry: ``h`` ``(B, H)`` the last output, ``S`` ``(B, Nh, Dk, Dv)``."""

    h: Array
    S: Array


class GatedDeltaNetCell(RecurrentCell):
    """Gated DeltaNet as an rnnjax cell (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H = ``num_heads * Dv``, the output width.
      num_heads: Nh.
      key_dim: Dk per head (default ``H / num_heads``, i.e. ``Dk = Dv``).
      chunk_size: C for ``scan_mode="chunked"``.
      scan_mode: ``"chunked"`` (default) or ``"sequential"``; the same numbers
        (tests/test_deltanet.py).
      dtype, param_dtype: as for every cell; the recurrence runs in float32 at least.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        key_dim: int | None = None,
        chunk_size: int = 64,
        scan_mode: str = "chunked",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"GatedDeltaNetCell: hidden_features ({hidden_features}) must be a "
                             f"multiple of num_heads ({num_heads}) >= 1")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"GatedDeltaNetCell: unknown scan_mode {scan_mode!r}; known: "
                             f"{SCAN_MODES}")
        if chunk_size < 1:
            raise ValueError(f"GatedDeltaNetCell: chunk_size must be >= 1, got {chunk_size}")
        self.num_heads = num_heads
        self.key_dim = key_dim or hidden_features // num_heads
        self.chunk_size, self.scan_mode = chunk_size, scan_mode
        E, H, Nh, Dk = in_features, hidden_features, num_heads, self.key_dim
        width = 2 * Nh * Dk + H + 2 * Nh  # [q, k, v, a, β_raw]
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.w_in = nnx.Param(init(rngs.params(), (E, width), param_dtype))
        self.b_in = nnx.Param(jnp.zeros((width,), param_dtype))
        self.dt_bias = nnx.Param(dt_bias_init(rngs.params(), Nh).astype(param_dtype))
        a = jax.random.uniform(rngs.params(), (Nh,), jnp.float32, 1.0, 16.0)
        self.A_log = nnx.Param(jnp.log(a).astype(param_dtype))

    @property
    def value_dim(self) -> int:
        return self.hidden_features // self.num_heads

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 2 Nh Dk + H + 2 Nh)``: ``[q, k, v, a, β_raw]``, one matmul."""
        self.check_features(x)
        return self._cast(x) @ self._p("w_in") + self._p("b_in")

    def _split(self, xp: Array):
        """The gate function: ``xp`` -> ``q, k (..., Nh, Dk)`` (L2-normalised, ``q`` scaled by
        ``Dk^-1/2``), ``v (..., Nh, Dv)``, ``g = log α <= 0`` and ``β`` ``(..., Nh)``."""
        ct = jnp.promote_types(xp.dtype, jnp.float32)
        xp = xp.astype(ct)
        Nh, Dk, Dv = self.num_heads, self.key_dim, self.value_dim
        lead = xp.shape[:-1]
        o = 0

        def take(n, shape):
            nonlocal o
            part = xp[..., o : o + n].reshape(lead + shape)
            o += n
            return part

        q = l2_normalize(take(Nh * Dk, (Nh, Dk))) * Dk**-0.5
        k = l2_normalize(take(Nh * Dk, (Nh, Dk)))
        v = take(Nh * Dv, (Nh, Dv))
        a = take(Nh, (Nh,))
        beta = jax.nn.sigmoid(take(Nh, (Nh,)))
        g = -jnp.exp(self.A_log[...].astype(ct)) * jax.nn.softplus(a + self.dt_bias[...]
                                                                   .astype(ct))
        return q, k, v, g, beta

    def _flat(self, o: Array) -> Array:
        return o.reshape(o.shape[:-2] + (self.hidden_features,))

    def step_projected(self, carry, xp_t):
        q, k, v, g, beta = self._split(xp_t)
        S, o = gdn_step(carry.S.astype(q.dtype), q, k, v, g, beta)
        y = self._flat(o)
        return GDNState(y.astype(carry.h.dtype), S.astype(carry.S.dtype)), y.astype(xp_t.dtype)

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """The sequence form chosen by ``scan_mode`` over ``xp`` ``(T, B, P)``; same contract
        as :meth:`RecurrentCell.scan_projected`."""
        if resets is not None:
            # Packed segments run on the step loop (RecurrentCell.scan_projected), which
            # restarts the carry at each segment start; the chunked form has no reset yet.
            return super().scan_projected(carry, xp, mask, reverse=reverse, unroll=unroll,
                                          resets=resets)
        q, k, v, g, beta = self._split(xp)
        S0 = carry.S.astype(q.dtype)
        if self.scan_mode == "chunked":
            S, o = gdn_chunked(q, k, v, g, beta, S0, mask, chunk_size=self.chunk_size,
                               reverse=reverse)
        else:
            S, o = gdn_sequential(q, k, v, g, beta, S0, mask, reverse=reverse, unroll=unroll)
        ys = self._flat(o)
        h = last_valid(ys, mask, reverse, carry.h)
        return GDNState(h.astype(carry.h.dtype), S.astype(carry.S.dtype)), ys.astype(xp.dtype)

    def initialize_carry(self, batch_shape, dtype=None):
        h = self._zeros(batch_shape, dtype)
        return GDNState(h, jnp.zeros(h.shape[:-1] + (self.num_heads, self.key_dim,
                                                     self.value_dim), h.dtype))

    @property
    def state_width(self) -> int:
        """``Nh Dk Dv``: gradient through time is measured on the flattened memory ``S``."""
        return self.num_heads * self.key_dim * self.value_dim

    def perturbed_step(self, carry, xp_t, eps):
        """The step with ``eps`` ``(B, Nh Dk Dv)`` added to the new memory ``S_t``; the output
        ``S_tᵀ q_t`` is read from the perturbed memory, so it reaches ``y_t`` too."""
        carry, _ = self.step_projected(carry, xp_t)
        S = carry.S + eps.reshape(carry.S.shape).astype(carry.S.dtype)
        q = self._split(xp_t)[0]
        y = self._flat(jnp.einsum("bhkv,bhk->bhv", S.astype(q.dtype), q))
        return GDNState(y.astype(carry.h.dtype), S), y.astype(xp_t.dtype)

    def gate_activations(self, carry, xp_t):
        return {"beta": ("sigmoid", self._split(xp_t)[4])}


register_cell("gated_deltanet", GatedDeltaNetCell)
