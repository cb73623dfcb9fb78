"""Mamba-2's state space duality, SSD (Dao & Gu 2024, "Transformers are SSMs").

A selective SSM whose state matrix is a scalar times the identity per head. For each of
``Nh`` heads, with head width ``P`` and state size ``N``::

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ      h_t (P, N), x_t (P,), B_t, C_t (N,)
    y_t = h_t C_t  (+ D x_t, added by the cell)

``A < 0`` is one scalar per head, ``Δ_t > 0`` one scalar per head and step. Writing
``la_t = Δ_t A`` (the log decay, ``<= 0``) and ``L`` for the 1-semiseparable matrix
``L[i, j] = exp(la_{j+1} + ... + la_i)`` for ``i >= j`` (0 above the diagonal), the whole
sequence is the masked attention-like product ``y = (C Bᵀ ∘ L) (Δ x)`` (the "dual"
quadratic form). Three evaluations of the same numbers:

==============  ==========================================================================
sequential      :func:`ssd_sequential`: ``lax.scan`` over T of the recurrence above.
quadratic       :func:`ssd_quadratic`: the masked product, ``O(T²)`` work, no time loop.
chunked         :func:`ssd_chunked`: the SSD algorithm. The sequence is cut into chunks
                of ``C`` steps; within a chunk the quadratic form (parallel); between
                chunks only the ``(P, N)`` states pass, by a scan over ``T/C`` chunks.
                ``T`` need not be a multiple of ``C``: the tail is padded with ``Δ = 0``,
                a step that neither decays (``exp 0 = 1``) nor writes (``0 · x``).
==============  ==========================================================================

Every function is time-major, ``x (T, B, Nh, P)``, ``dt (T, B, Nh)``, ``A (Nh,)``,
``Bm, Cm (T, B, Nh, N)`` (groups of heads sharing ``B``/``C`` are broadcast by the cell),
state ``(B, Nh, P, N)``, and computes in float32 at least. ``mask (T, B)`` follows
:func:`rnnjax.nn.scan.masked_scan`: a masked step is ``Δ = 0`` (state unchanged) and
outputs zero. ``reverse`` runs ``t = T-1 .. 0`` (done by flipping time).

Why ``segsum`` by a masked cumulative sum and not ``cumsum[i] - cumsum[j]``: the
difference of two long prefix sums cancels in float32, the masked sum adds only the
terms between ``j`` and ``i`` (as the paper's minimal code notes).

The cell, :class:`SSDCell` (registered as ``"mamba2"``), wraps the maths: an input
projection to ``x`` (``H = Nh P``), ``B``, ``C`` (``N`` each, shared by all heads: Mamba-2's
``ngroups = 1``) and ``Δ`` (one per head), then ``Δ = softplus(Δ_raw + dt_bias)``,
``A = -exp(A_log)`` and ``y = C h + D x``. Mamba-2's initialisation: ``Δ`` log-uniform in
``[dt_min, dt_max] = [0.001, 0.1]`` (through ``dt_bias``), ``A`` uniform in ``[1, 16]``,
``D = 1``. The block around it in Mamba-2 (short causal conv, the ``z`` gate, RMSNorm,
the output projection) is the block's job, not the cell's.

This module must never import a layer or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, register_cell
from rnnjax.nn.types import Array

__all__ = ["SSDCell", "SSDState", "last_valid", "segsum", "ssd_chunked", "ssd_quadratic",
           "ssd_sequential", "ssd_step"]


def segsum(la: Array) -> Array:
    """``(..., C) -> (..., C, C)``: ``out[i, j] = la[j+1] + ... + la[i]`` for ``i >= j``,
    ``-inf`` above the diagonal, so that ``exp(segsum)`` is the decay matrix ``L``."""
    c = la.shape[-1]
    strict = jnp.tril(jnp.ones((c, c), bool), k=-1)
    # x[..., i, j] = la[i] where i > j, else 0; summed over i' <= i gives la[j+1..i].
    x = jnp.where(strict, la[..., :, None], 0.0)
    out = jnp.cumsum(x, axis=-2)
    return jnp.where(jnp.tril(jnp.ones((c, c), bool)), out, -jnp.inf)


def _prepare(x, dt, A, Bm, Cm, h0, mask, reverse):
    """Casts to the compute dtype, applies the mask as ``Δ = 0``, flips for reverse."""
    ct = jnp.promote_types(jnp.result_type(x, dt, Bm, Cm), jnp.float32)
    x, dt, A, Bm, Cm, h0 = (v.astype(ct) for v in (x, dt, A, Bm, Cm, h0))
    if mask is not None:
        dt = jnp.where(mask[:, :, None], dt, 0.0)
    la = dt * A  # (T, B, Nh) log decay
    xdt = x * dt[..., None]  # (T, B, Nh, P): the input Δ x
    if reverse:
        la, xdt, Bm, Cm = (jnp.flip(v, 0) for v in (la, xdt, Bm, Cm))
    return la, xdt, Bm, Cm, h0


def _finish(y, h_last, x, mask, reverse):
    if reverse:
        y = jnp.flip(y, 0)
    if mask is not None:
        y = jnp.where(mask[:, :, None, None], y, 0.0)
    return h_last.astype(x.dtype), y.astype(x.dtype)


def ssd_step(h, x_t, dt_t, A, b_t, c_t):
    """One step: ``h (B, Nh, P, N)``, ``x_t (B, Nh, P)``, ``dt_t (B, Nh)``, ``b_t, c_t
    (B, Nh, N)`` -> ``(h_t, y_t (B, Nh, P))``, ``h_t = exp(Δ A) h + Δ x bᵀ``, ``y_t = h_t c``."""
    return _step(h, (dt_t * A, x_t * dt_t[..., None], b_t, c_t))


def _step(h, inp):
    la_t, xdt_t, b_t, c_t = inp
    h = jnp.exp(la_t)[..., None, None] * h + xdt_t[..., :, None] * b_t[..., None, :]
    return h, jnp.einsum("bhpn,bhn->bhp", h, c_t)


def ssd_sequential(x, dt, A, Bm, Cm, h0, mask=None, *, reverse=False, unroll=1):
    """The recurrence, one step at a time. Returns ``(h_last (B, Nh, P, N), y (T, B, Nh, P))``."""
    la, xdt, Bm, Cm, h0 = _prepare(x, dt, A, Bm, Cm, h0, mask, reverse)
    step = _step

    h_last, y = jax.lax.scan(step, h0, (la, xdt, Bm, Cm), unroll=unroll)
    return _finish(y, h_last, x, mask, reverse)


def _chunk_parts(la, xdt, Bm, Cm):
    """The parallel, state-free parts of chunks ``(..., C, B, ...)`` (leading chunk axes).

    Returns ``y_diag`` (outputs from inputs inside the chunk, ``h_in = 0``), ``states``
    (the chunk's end state from its own inputs, ``(..., B, Nh, P, N)``), ``decay_in``
    ``exp(cumsum la)`` (how ``h_in`` decays to each step) and ``decay_all`` (to the end).
    """
    cs = jnp.cumsum(la, axis=-3)  # (..., C, B, Nh)
    L = jnp.exp(segsum(jnp.moveaxis(la, -3, -1)))  # (..., B, Nh, C_i, C_j)
    y_diag = jnp.einsum("...ibhn,...jbhn,...bhij,...jbhp->...ibhp", Cm, Bm, L, xdt)
    # exp(la_{j+1} + ... + la_C) from step j to the chunk's end: the last row of L.
    to_end = jnp.moveaxis(L[..., -1, :], -1, -3)  # (..., C, B, Nh)
    states = jnp.einsum("...jbhn,...jbh,...jbhp->...bhpn", Bm, to_end, xdt)
    return y_diag, states, jnp.exp(cs), jnp.exp(cs[..., -1, :, :])


def _chunk_out(y_diag, decay_in, Cm, h_in):
    """Adds the carried state's contribution ``C_i exp(cs_i) h_in`` to ``y_diag``."""
    return y_diag + jnp.einsum("...ibhn,...bhpn,...ibh->...ibhp", Cm, h_in, decay_in)


def ssd_quadratic(x, dt, A, Bm, Cm, h0, mask=None, *, reverse=False):
    """The dual form: ``y = (C Bᵀ ∘ L)(Δ x) + C exp(cumsum la) h0`` over the whole sequence.

    ``O(T² N)`` work and ``(T, T)`` memory per head: for short sequences and for tests.
    Returns ``(h_last, y)`` as :func:`ssd_sequential`.
    """
    la, xdt, Bm, Cm, h0 = _prepare(x, dt, A, Bm, Cm, h0, mask, reverse)
    y_diag, states, decay_in, decay_all = _chunk_parts(la, xdt, Bm, Cm)
    y = _chunk_out(y_diag, decay_in, Cm, h0)
    h_last = decay_all[..., None, None] * h0 + states
    return _finish(y, h_last, x, mask, reverse)


def ssd_chunked(x, dt, A, Bm, Cm, h0, mask=None, *, chunk_size=64, reverse=False):
    """The SSD algorithm (module docstring): quadratic inside chunks of ``chunk_size``
    steps, a scan over chunks for the states. Any ``T``; ``chunk_size >= T`` is the
    quadratic form. Returns ``(h_last, y)`` as :func:`ssd_sequential`."""
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be >= 1, got {chunk_size}")
    la, xdt, Bm, Cm, h0 = _prepare(x, dt, A, Bm, Cm, h0, mask, reverse)
    t = la.shape[0]
    c = min(chunk_size, t)
    nc = -(-t // c)
    pad = nc * c - t

    def chunks(v):  # (T, ...) -> (nc, C, ...); padding is Δ = 0: no decay, no input
        v = jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
        return v.reshape((nc, c) + v.shape[1:])

    la, xdt, Bm, Cm = (chunks(v) for v in (la, xdt, Bm, Cm))
    y_diag, states, decay_in, decay_all = _chunk_parts(la, xdt, Bm, Cm)

    # State passing: h_in[k+1] = decay_all[k] h_in[k] + states[k]; only T/C sequential
    # steps of (B, Nh, P, N) work, the rest above and below is parallel over chunks.
    def pass_state(h, inp):
        d, s = inp
        return d[..., None, None] * h + s, h

    h_last, h_in = jax.lax.scan(pass_state, h0, (decay_all, states))
    y = _chunk_out(y_diag, decay_in, Cm, h_in)
    y = y.reshape((nc * c,) + y.shape[2:])[:t]
    return _finish(y, h_last, x, mask, reverse)


def last_valid(ys: Array, mask: Array | None, reverse: bool, default: Array) -> Array:
    """``(T, B, H) -> (B, H)``: each row's output at its last step processed that is valid
    (the last valid ``t`` forward, the first reverse), or ``default`` where a row has none.

    Why: a carry's ``h`` is the last output (pooling and bridges read it), and for
    these cells the output is not the state, so it is gathered after the scan.
    """
    T = ys.shape[0]
    if mask is None:
        return ys[0] if reverse else ys[-1]
    m = mask.astype(bool)
    t = jnp.arange(T)[:, None]
    idx = jnp.where(m, t, T if reverse else -1)
    idx = idx.min(axis=0) if reverse else idx.max(axis=0)  # (B,)
    h = jnp.take_along_axis(ys, jnp.clip(idx, 0, T - 1)[None, :, None], axis=0)[0]
    return jnp.where(((idx >= 0) & (idx < T))[:, None], h, default.astype(h.dtype))


def dt_bias_init(key: jax.Array, n: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_floor: float = 1e-4) -> Array:
    """Mamba's ``dt_bias`` ``(n,)``: ``softplus(dt_bias)`` log-uniform in ``[dt_min, dt_max]``."""
    u = jax.random.uniform(key, (n,), jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_floor)
    return dt + jnp.log(-jnp.expm1(-dt))  # softplus^{-1}(dt) = log(expm1(dt))


SCAN_MODES = ("chunked", "quadratic", "sequential")


class SSDState(NamedTuple):
    """The Mamba-2 carry: ``h`` ``(B, H)`` the last output, ``s`` ``(B, Nh, P, N)`` the state."""

    h: Array
    s: Array


class SSDCell(RecurrentCell):
    """Mamba-2's SSD layer as an rnnjax cell (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H = ``num_heads * P``, the output width.
      num_heads: Nh, heads with one scalar decay each.
      state_size: N, the size of ``B_t`` and ``C_t`` (Mamba-2: 64-128; small here).
      chunk_size: C for ``scan_mode="chunked"``.
      scan_mode: ``"chunked"`` (default), ``"quadratic"`` or ``"sequential"``; all give
        the same numbers (tests/test_ssd.py).
      dt_min, dt_max: the range of the initial ``Δ``; a_init_range: of the initial ``-A``.
      dtype, param_dtype: as for every cell; the recurrence runs in float32 at least.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        state_size: int = 16,
        chunk_size: int = 64,
        scan_mode: str = "chunked",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"SSDCell: hidden_features ({hidden_features}) must be a multiple "
                             f"of num_heads ({num_heads}) >= 1")
        if scan_mode not in SCAN_MODES:
            raise ValueError(f"SSDCell: unknown scan_mode {scan_mode!r}; known: {SCAN_MODES}")
        if chunk_size < 1 or state_size < 1:
            raise ValueError(f"SSDCell: chunk_size and state_size must be >= 1, got "
                             f"{chunk_size} and {state_size}")
        self.num_heads, self.state_size = num_heads, state_size
        self.chunk_size, self.scan_mode = chunk_size, scan_mode
        E, H, Nh, N = in_features, hidden_features, num_heads, state_size
        width = H + 2 * N + Nh  # [x, B, C, Δ_raw]
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        self.w_in = nnx.Param(init(rngs.params(), (E, width), param_dtype))
        self.b_in = nnx.Param(jnp.zeros((width,), param_dtype))
        self.dt_bias = nnx.Param(dt_bias_init(rngs.params(), Nh, dt_min, dt_max)
                                 .astype(param_dtype))
        lo, hi = a_init_range
        a = jax.random.uniform(rngs.params(), (Nh,), jnp.float32, lo, hi)
        self.A_log = nnx.Param(jnp.log(a).astype(param_dtype))
        self.D = nnx.Param(jnp.ones((Nh,), param_dtype))

    @property
    def head_dim(self) -> int:
        return self.hidden_features // self.num_heads

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., H + 2N + Nh)``: ``[x, B, C, Δ_raw]``, one matmul."""
        self.check_features(x)
        return self._cast(x) @ self._p("w_in") + self._p("b_in")

    def _split(self, xp: Array):
        """The gate function: ``xp (..., H+2N+Nh)`` -> ``x (..., Nh, P)``, ``Δ (..., Nh)``,
        ``A (Nh,)``, ``B, C (..., Nh, N)`` (broadcast over heads), ``D (Nh,)``; float32+."""
        ct = jnp.promote_types(xp.dtype, jnp.float32)
        xp = xp.astype(ct)
        H, N, Nh = self.hidden_features, self.state_size, self.num_heads
        lead = xp.shape[:-1]
        x = xp[..., :H].reshape(lead + (Nh, self.head_dim))
        Bm = jnp.broadcast_to(xp[..., None, H : H + N], lead + (Nh, N))
        Cm = jnp.broadcast_to(xp[..., None, H + N : H + 2 * N], lead + (Nh, N))
        dt = jax.nn.softplus(xp[..., H + 2 * N :] + self.dt_bias[...].astype(ct))
        A = -jnp.exp(self.A_log[...].astype(ct))
        return x, dt, A, Bm, Cm, self.D[...].astype(ct)

    def _out(self, y, x, D):
        """``y + D x``, flattened to ``(..., H)``."""
        y = y + D[:, None] * x
        return y.reshape(y.shape[:-2] + (self.hidden_features,))

    def step_projected(self, carry, xp_t):
        x, dt, A, Bm, Cm, D = self._split(xp_t)
        s, y = ssd_step(carry.s.astype(x.dtype), x, dt, A, Bm, Cm)
        y = self._out(y, x, D)
        return SSDState(y.astype(carry.h.dtype), s.astype(carry.s.dtype)), y.astype(xp_t.dtype)

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """The sequence form chosen by ``scan_mode`` over ``xp`` ``(T, B, P)``; same contract
        as :meth:`RecurrentCell.scan_projected`."""
        if resets is not None:
            # Packed segments run on the step loop (RecurrentCell.scan_projected), which
            # restarts the carry at each segment start; the chunked form has no reset yet.
            return super().scan_projected(carry, xp, mask, reverse=reverse, unroll=unroll,
                                          resets=resets)
        x, dt, A, Bm, Cm, D = self._split(xp)
        s0 = carry.s.astype(x.dtype)
        if self.scan_mode == "chunked":
            s, y = ssd_chunked(x, dt, A, Bm, Cm, s0, mask, chunk_size=self.chunk_size,
                               reverse=reverse)
        elif self.scan_mode == "quadratic":
            s, y = ssd_quadratic(x, dt, A, Bm, Cm, s0, mask, reverse=reverse)
        else:
            s, y = ssd_sequential(x, dt, A, Bm, Cm, s0, mask, reverse=reverse, unroll=unroll)
        ys = self._out(y, x, D)
        if mask is not None:
            ys = jnp.where(mask[..., None], ys, 0.0)
        h = last_valid(ys, mask, reverse, carry.h)
        return SSDState(h.astype(carry.h.dtype), s.astype(carry.s.dtype)), ys.astype(xp.dtype)

    def initialize_carry(self, batch_shape, dtype=None):
        h = self._zeros(batch_shape, dtype)
        return SSDState(h, jnp.zeros(h.shape[:-1] + (self.num_heads, self.head_dim,
                                                     self.state_size), h.dtype))

    @property
    def state_width(self) -> int:
        """``Nh P N``: gradient through time is measured on the flattened SSM state."""
        return self.hidden_features * self.state_size

    def perturbed_step(self, carry, xp_t, eps):
        """The step with ``eps`` ``(B, Nh P N)`` added to the new state ``s_t``; the output
        is read from the perturbed state, so it reaches ``y_t`` too."""
        carry, _ = self.step_projected(carry, xp_t)
        s = carry.s + eps.reshape(carry.s.shape).astype(carry.s.dtype)
        x, _, _, _, Cm, D = self._split(xp_t)
        y = self._out(jnp.einsum("bhpn,bhn->bhp", s.astype(x.dtype), Cm), x, D)
        return SSDState(y.astype(carry.h.dtype), s), y.astype(xp_t.dtype)


register_cell("mamba2", SSDCell)
