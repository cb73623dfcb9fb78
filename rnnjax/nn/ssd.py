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

This module knows nothing about parameters or cells above the maths; it must never
import a layer or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array

__all__ = ["segsum", "ssd_chunked", "ssd_quadratic", "ssd_sequential"]


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


def ssd_sequential(x, dt, A, Bm, Cm, h0, mask=None, *, reverse=False, unroll=1):
    """The recurrence, one step at a time. Returns ``(h_last (B, Nh, P, N), y (T, B, Nh, P))``."""
    la, xdt, Bm, Cm, h0 = _prepare(x, dt, A, Bm, Cm, h0, mask, reverse)

    def step(h, inp):
        la_t, xdt_t, b_t, c_t = inp
        h = jnp.exp(la_t)[..., None, None] * h + xdt_t[..., :, None] * b_t[..., None, :]
        return h, jnp.einsum("bhpn,bhn->bhp", h, c_t)

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
