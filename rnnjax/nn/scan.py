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

    Returns:
      ``(final_carry, ys)`` with ``ys`` time-major ``(T, B, ...)``.
    """
    if mask is None:
        return jax.lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)

    def body(c, inp):
        x_t, m_t = inp
        new_c, y_t = step(c, x_t)
        new_c = jax.tree.map(lambda n, o: jnp.where(_bcast(m_t, n), n, o), new_c, c)
        y_t = jax.tree.map(lambda y: jnp.where(_bcast(m_t, y), y, jnp.zeros_like(y)), y_t)
        return new_c, y_t

    return jax.lax.scan(body, carry, (xs, mask), reverse=reverse, unroll=unroll)


def lengths_to_mask(lengths: Array, max_len: int) -> Array:
    """``(B,)`` int lengths -> ``(B, T)`` bool mask, True for ``t < lengths[b]``."""
    return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]
