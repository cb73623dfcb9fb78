"""Time loops shared by every recurrent layer.

A cell supplies a pure step ``(carry, x_t) -> (carry, y_t)``; this module runs it
over time. It knows nothing about gates or parameters, and it must never import
a cell, a layer or anything above ``rnnjax.nn``.

Masking convention (PyTorch packed-sequence semantics, right padding):

* where ``mask[t, b]`` is False the carry of row ``b`` is left unchanged and the
  output is zero;
* so in a forward scan the final carry is each row's carry at its own last valid
  step, and in a reverse scan (``reverse=True``) each row starts from its initial
  carry at its own last valid step and runs back to ``t = 0``, exactly as
  ``torch.nn.utils.rnn.pack_padded_sequence`` does for the backward direction.

Reset convention (packing many short sequences into one row): ``resets[t, b]``
True means that, before step ``t`` (in processing order, so for a reverse scan
the step where a segment *ends* in input order), the carry of row ``b`` is
replaced by the initial carry given to the scan. A reset on a masked step does
nothing. Every time loop in ``rnnjax.nn`` (this one, the fused LSTM/GRU loops,
:mod:`rnnjax.nn.linear_scan`) takes ``resets`` with this meaning; the layers
(:class:`rnnjax.nn.layers.Recurrent`) build it from a batch-major ``(B, T)``
segment-start array.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array, Carry


def _bcast(m: Array, like: Array) -> Array:
    """Reshape a ``(B,)`` mask so that it broadcasts against ``like`` ``(B, ...)``."""
    return m.reshape(m.shape + (1,) * (like.ndim - m.ndim))


def masked_scan(
    step: Callable[[Carry, Array], tuple[Carry, Array]],
    carry: Carry,
    xs,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    resets: Array | None = None,
) -> tuple[Carry, Array]:
    """Runs ``step`` over the leading (time) axis of ``xs`` with an optional mask.

    Args:
      step: ``(carry, x_t) -> (carry, y_t)``; carry leaves are ``(B, ...)``.
      carry: the initial carry, leaves ``(B, ...)``.
      xs: a pytree of time-major arrays ``(T, B, ...)``.
      mask: ``(T, B)`` bool, True where the step is valid; None means all valid
        (and costs nothing).
      reverse: run from ``t = T-1`` down to 0 (outputs stay in input order).
      unroll: passed to ``jax.lax.scan``.
      resets: ``(T, B)`` bool or None: True where the carry restarts from ``carry``
        before the step (see the module docstring); None costs nothing.

    Returns:
      ``(final_carry, ys)`` with ``ys`` time-major ``(T, B, ...)``.
    """
    if mask is None and resets is None:
        return jax.lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)
    carry0 = carry

    def body(c, inp):
        x_t, m_t, r_t = inp
        c_in = c
        if r_t is not None:
            c_in = jax.tree.map(lambda i, o: jnp.where(_bcast(r_t, o), i, o), carry0, c)
        new_c, y_t = step(c_in, x_t)
        if m_t is not None:
            new_c = jax.tree.map(lambda n, o: jnp.where(_bcast(m_t, n), n, o), new_c, c)
            y_t = jax.tree.map(lambda y: jnp.where(_bcast(m_t, y), y, jnp.zeros_like(y)), y_t)
        return new_c, y_t

    return jax.lax.scan(body, carry, (xs, mask, resets), reverse=reverse, unroll=unroll)


def direction_resets(segment_starts: Array | None, mask: Array | None, *,
                     reverse: bool) -> Array | None:
    """Time-major segment starts ``(T, B)`` -> the ``resets`` a scan in that direction takes.

    Forward, a segment restarts at its first step; in reverse it restarts at its last
    (the step before the next segment's start). Only valid steps reset.
    """
    if segment_starts is None:
        return None
    r = segment_starts.astype(bool)
    if reverse:
        # A row's own last valid step starts from the initial carry through the mask
        # already, so only the ends of inner segments need a flag.
        r = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])], axis=0)
    return r if mask is None else r & mask


def lengths_to_mask(lengths: Array, max_len: int) -> Array:
    """``(B,)`` int lengths -> ``(B, T)`` bool mask, True for ``t < lengths[b]``."""
    return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]
