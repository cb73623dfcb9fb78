"""Scans for the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

This is the time loop of the parallel-scan cells (minGRU, minLSTM; Feng et al.
2024, "Were RNNs All We Needed?"): their gates depend on ``x_t`` only, so the
whole sequence reduces to one elementwise linear recurrence that can be solved
in ``O(log T)`` depth instead of ``T`` sequential steps. Three evaluation
strategies, chosen by :class:`ScanMode`:

==============  ==================================================================
SEQUENTIAL      ``jax.lax.scan``, one step per time step. Fastest on CPUs; on a
                GPU the parallel modes beat it 15-100x (scripts/bench_scan.py).
ASSOCIATIVE     ``jax.lax.associative_scan`` with the operator
                ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``; ``O(log T)`` depth.
LOG_SPACE       Heinsen (2023): ``a* = cumsum(log a)``,
                ``h = exp(a*) h0 + exp(a* + logcumsumexp(log b - a*))``, both
                prefix sums as ``associative_scan`` (with ``+``, ``logaddexp``). Needs
                ``a > 0`` and ``b > 0`` given as logarithms, so it exists only in
                :func:`log_linear_scan`.
==============  ==================================================================

Two entry points, with the inputs each mode takes:

* :func:`linear_scan` ``(a, b, h0)`` in real space, any sign, or complex (the LRU's
  diagonal recurrence, :mod:`rnnjax.nn.lru`): SEQUENTIAL and ASSOCIATIVE. LOG_SPACE
  raises (real ``a``/``b`` may be negative).
* :func:`log_linear_scan` ``(log_a, log_b, h0)``: the same recurrence with
  ``a = exp(log_a)``, ``b = exp(log_b)``; all three modes, which compute the same
  thing. SEQUENTIAL and ASSOCIATIVE exponentiate first and run the real-space
  scan (exact whenever the result is representable, since ``0 < a`` and
  ``h_t >= b_t`` when ``h0 >= 0``); LOG_SPACE stays in log space throughout. The
  initial state ``h0`` is **real** in both functions: by linearity its
  contribution is ``(prod a) * h0``, so it needs no logarithm, a zero initial
  state (the default carry) costs no ``log 0`` and gets finite gradients, and
  ``h0`` may even be negative.

Every function accumulates in float32 (float64 and complex stay as they are) whatever
the input dtype and casts the results back. Variable lengths use the masking convention
of :func:`rnnjax.nn.scan.masked_scan` (PyTorch packed sequences): where
``mask[t, b]`` is False, ``h`` carries over unchanged (the step becomes
``a = 1, b = 0``) and the output is zero. With right padding a reverse scan
therefore starts from ``h0`` at each row's own last valid step, in every mode.

Segment resets (``resets``, :mod:`rnnjax.nn.scan`'s convention: True where ``h``
restarts from ``h0`` before the step) cost no extra pass in the real-space modes: a
restarted step is ``h_t = a_t h0 + b_t``, i.e. ``a_t -> 0`` and ``b_t -> b_t + a_t h0``.
LOG_SPACE keeps ``a*`` unsegmented (so no ``log 0`` enters it) and runs the
``logcumsumexp`` as a segmented prefix scan; ``h0``'s term is ``exp(a*_t - a*_{s-1}) h0``
with ``s`` the segment's first step.

Precision note for LOG_SPACE: ``a*`` grows like ``T`` times the mean ``|log a|``,
and the final ``a* + logcumsumexp(log b - a*)`` cancels two large numbers, so its
float32 relative error grows with ``|a*|``. Measured against float64 at T=4096,
``a ~ U(0.3, 0.9)`` (``|a*| ~ 2300`` at the end): LOG_SPACE 7e-4 (8e-6 over the
first 100 steps), ASSOCIATIVE 2.5e-7, SEQUENTIAL 1.8e-7. Hence ASSOCIATIVE is the
cells' default; on an H200 the two ran at the same speed (scripts/bench_scan.py).

This module knows nothing about cells or parameters; it must never import a
cell, a layer or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array

# Stands in for log(0) on masked steps of the log-space scan. With a true -inf,
# the prefix scan pairs up padded steps into logaddexp(-inf, -inf), whose
# gradient is NaN, and the backward pass spreads that NaN to the valid steps'
# log a. -1e30 still underflows exp() to exactly 0 and, unlike float32's min,
# leaves headroom for log_b - a*.
_LOG_ZERO = -1e30


class ScanMode(enum.Enum):
    """How to evaluate the linear recurrence; values are the config strings."""

    SEQUENTIAL = "sequential"
    ASSOCIATIVE = "associative"
    LOG_SPACE = "log_space"

    @classmethod
    def parse(cls, mode: ScanMode | str) -> ScanMode:
        """Accepts a :class:`ScanMode` or its string value (as written in configs)."""
        if isinstance(mode, cls):
            return mode
        try:
            return cls(str(mode).lower())
        except ValueError:
            raise ValueError(
                f"unknown scan mode {mode!r}; known: {[m.value for m in cls]}"
            ) from None


def _compute_dtype(*arrays: Array):
    """float32, or float64 if an input already is: the precision we accumulate in."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _check(where: str, a: Array, b: Array, h0: Array, mask: Array | None,
           resets: Array | None = None) -> None:
    if resets is not None and resets.shape != a.shape[:2]:
        raise ValueError(f"{where}: resets must be time-major (T, B) = {a.shape[:2]}, got "
                         f"{resets.shape}")
    if a.ndim < 2:
        raise ValueError(f"{where}: inputs must be time-major (T, B, H), got shape {a.shape}")
    if a.shape != b.shape:
        raise ValueError(f"{where}: the two coefficient arrays must have the same (T, B, H) "
                         f"shape, got {a.shape} and {b.shape}")
    if a.shape[0] < 1:
        raise ValueError(f"{where}: empty sequence (T=0); give at least one time step")
    if h0.shape != a.shape[1:]:
        raise ValueError(f"{where}: h0 must be (B, H) = {a.shape[1:]} to match coefficients "
                         f"of shape {a.shape}, got {h0.shape}")
    if mask is not None and mask.shape != a.shape[:2]:
        raise ValueError(f"{where}: mask must be time-major (T, B) = {a.shape[:2]}, got "
                         f"{mask.shape}; transpose a batch-major (B, T) mask")


def _expand(mask: Array, like: Array) -> Array:
    """``(T, B)`` -> ``(T, B, 1, ...)`` broadcastable against ``like``."""
    return mask.astype(bool).reshape(mask.shape + (1,) * (like.ndim - 2))


def _prefix(op: Callable, x: Array, reverse: bool) -> Array:
    """Inclusive prefix reduction of ``x`` over time (axis 0) with ``op``.

    Why not ``lax.cumsum``/``lax.cumlogsumexp``: XLA lowers them to a
    reduce-window, which XLA:CPU runs in O(T^2) work (cumlogsumexp: 784 ms
    against 14 ms here at T=1024, B=16, H=128 on 2 cores), and on an H200 they
    were no faster than ``associative_scan`` (T=4096: cumlogsumexp 0.42 ms,
    associative logaddexp 0.16 ms; cumsum 0.20 ms, associative add 0.17 ms).
    JAX differentiates the primitives through ``associative_scan`` anyway.
    """
    return jax.lax.associative_scan(op, x, reverse=reverse, axis=0)


def _combine(earlier, later):
    """Composes two affine maps ``h -> a h + b``: first ``earlier``, then ``later``."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _finish(hs: Array, mask: Array | None, reverse: bool, out_dtype):
    """Takes the final state and zeroes masked outputs; ``hs`` holds every state."""
    # Masked steps are identities, so the state after the last step processed
    # (t = T-1 forward, t = 0 reverse) is each row's state at its own last valid step.
    h_last = hs[0] if reverse else hs[-1]
    if mask is not None:
        hs = jnp.where(_expand(mask, hs), hs, jnp.zeros_like(hs))
    return h_last.astype(out_dtype), hs.astype(out_dtype)


def linear_scan(
    a: Array,
    b: Array,
    h0: Array,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    mode: ScanMode | str = ScanMode.ASSOCIATIVE,
    unroll: int = 1,
    resets: Array | None = None,
) -> tuple[Array, Array]:
    """Solves ``h_t = a_t * h_{t-1} + b_t`` (elementwise) for real or complex ``a``, ``b``.

    Args:
      a: ``(T, B, H)`` time-major multiplicative coefficients, any sign.
      b: ``(T, B, H)`` additive inputs.
      h0: ``(B, H)`` initial state (``h_{-1}``; ``h_T`` for a reverse scan).
      mask: ``(T, B)`` bool, True where the step is valid; masked steps keep ``h``
        and output zero. None means all valid.
      reverse: run from ``t = T-1`` down to 0; outputs stay in input order.
      mode: :attr:`ScanMode.SEQUENTIAL` or :attr:`ScanMode.ASSOCIATIVE` (or their
        strings). LOG_SPACE needs positive inputs: use :func:`log_linear_scan`.
      unroll: ``jax.lax.scan`` unroll factor (SEQUENTIAL only).
      resets: ``(T, B)`` bool or None: True where ``h`` restarts from ``h0`` before the
        step (ignored on masked steps).

    Returns:
      ``(h_last, hs)``: ``h_last`` ``(B, H)`` is the state after the last step
      processed (each row's last valid step forward, ``t = 0`` reverse); ``hs``
      ``(T, B, H)`` every state, zero where masked. Both in ``b``'s dtype.
    """
    mode = ScanMode.parse(mode)
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    _check("linear_scan", a, b, h0, mask, resets)
    if mode is ScanMode.LOG_SPACE:
        raise ValueError(
            "linear_scan: ScanMode.LOG_SPACE needs a > 0 and b > 0 given as logarithms; "
            "call log_linear_scan(log_a, log_b, h0, ...) or use mode 'sequential'/'associative'"
        )
    out_dtype = b.dtype
    ct = _compute_dtype(a, b, h0)
    a, b, h0 = a.astype(ct), b.astype(ct), h0.astype(ct)
    if mask is not None:
        m = _expand(mask, a)
        a = jnp.where(m, a, jnp.ones_like(a))
        b = jnp.where(m, b, jnp.zeros_like(b))
    if resets is not None:
        # A restart is h_t = a_t h0 + b_t: fold h0 into b and cut the chain (a = 0).
        r = _expand(resets if mask is None else resets & mask.astype(bool), a)
        b = jnp.where(r, b + a * h0, b)
        a = jnp.where(r, jnp.zeros_like(a), a)

    if mode is ScanMode.SEQUENTIAL:
        def step(h, ab):
            a_t, b_t = ab
            h = a_t * h + b_t
            return h, h

        _, hs = jax.lax.scan(step, h0, (a, b), reverse=reverse, unroll=unroll)
    else:
        # Fold h0 into the first element processed (t = 0 forward, T-1 reverse):
        # that element's map applied to h0 is a constant, and the rest compose.
        first = -1 if reverse else 0
        b = b.at[first].add(a[first] * h0)
        _, hs = jax.lax.associative_scan(_combine, (a, b), reverse=reverse, axis=0)
    return _finish(hs, mask, reverse, out_dtype)


def log_linear_scan(
    log_a: Array,
    log_b: Array,
    h0: Array,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    mode: ScanMode | str = ScanMode.LOG_SPACE,
    unroll: int = 1,
    resets: Array | None = None,
) -> tuple[Array, Array]:
    """Solves ``h_t = exp(log_a_t) * h_{t-1} + exp(log_b_t)`` (elementwise).

    The minGRU/minLSTM log-space parameterisation (Feng et al. 2024, App. B):
    ``log_a`` is a log forget coefficient (``<= 0`` for a stable recurrence,
    not required) and ``log_b`` the log of a positive input. Every mode computes
    the same ``h``; see the module docstring for how each does it.

    Args:
      log_a: ``(T, B, H)`` time-major ``log a``.
      log_b: ``(T, B, H)`` ``log b``; ``-inf`` (b = 0) is allowed only on steps
        that are also masked out.
      h0: ``(B, H)`` initial state in **real** space (any sign, zero is fine).
      mask: ``(T, B)`` bool or None; same semantics as :func:`linear_scan`.
      reverse: run from ``t = T-1`` down to 0; outputs stay in input order.
      mode: any :class:`ScanMode` or its string.
      unroll: ``jax.lax.scan`` unroll factor (SEQUENTIAL only).
      resets: ``(T, B)`` bool or None, as :func:`linear_scan`.

    Returns:
      ``(h_last, hs)`` in real space, as :func:`linear_scan`; dtype of ``log_b``.
    """
    mode = ScanMode.parse(mode)
    log_a, log_b, h0 = jnp.asarray(log_a), jnp.asarray(log_b), jnp.asarray(h0)
    _check("log_linear_scan", log_a, log_b, h0, mask, resets)
    out_dtype = log_b.dtype
    ct = _compute_dtype(log_a, log_b, h0)
    log_a, log_b, h0 = log_a.astype(ct), log_b.astype(ct), h0.astype(ct)
    if mode is not ScanMode.LOG_SPACE:
        h_last, hs = linear_scan(jnp.exp(log_a), jnp.exp(log_b), h0, mask, reverse=reverse,
                                 mode=mode, unroll=unroll, resets=resets)
        return h_last.astype(out_dtype), hs.astype(out_dtype)

    if mask is not None:
        m = _expand(mask, log_a)
        log_a = jnp.where(m, log_a, jnp.zeros_like(log_a))
        log_b = jnp.where(m, log_b, jnp.full_like(log_b, _LOG_ZERO))
    # a*_t = sum of log a over the steps processed so far, this one included;
    # then h_t = exp(a*_t) h0 + sum_{s<=t} exp(a*_t - a*_s + log b_s).
    a_star = _prefix(jnp.add, log_a, reverse)
    if resets is None:
        log_hb = a_star + _prefix(jnp.logaddexp, log_b - a_star, reverse)
        hs = jnp.exp(a_star) * h0 + jnp.exp(log_hb)
        return _finish(hs, mask, reverse, out_dtype)
    # Segmented: a*_t - a*_{s-1} is the log product of a over the segment so far
    # (s its first step), and the logcumsumexp restarts at s.
    r = _expand(resets if mask is None else resets & mask.astype(bool), log_a)
    r = jnp.broadcast_to(r, log_a.shape)
    a_before = a_star - log_a  # a*_{t-1}: 0 at the first step processed
    seg_base = _segmented(lambda v1, v2: v1, jnp.where(r, a_before, 0.0), r, reverse)
    log_hb = a_star + _segmented(jnp.logaddexp, log_b - a_star, r, reverse)
    hs = jnp.exp(a_star - seg_base) * h0 + jnp.exp(log_hb)
    return _finish(hs, mask, reverse, out_dtype)


def _segmented(op: Callable, x: Array, starts: Array, reverse: bool) -> Array:
    """Inclusive prefix reduction with ``op`` that restarts where ``starts`` is True.

    With ``op = lambda v1, v2: v1`` on values placed at the starts (zero elsewhere, and an
    implicit start at the first step processed) it carries each segment's start value.
    """
    def combine(earlier, later):
        f1, v1 = earlier
        f2, v2 = later
        return f1 | f2, jnp.where(f2, v2, op(v1, v2))

    return jax.lax.associative_scan(combine, (starts, x), reverse=reverse, axis=0)[1]
