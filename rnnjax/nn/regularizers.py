"""Regularisers that live inside a cell: weight drop (DropConnect on ``W_hh``) and zoneout.

* **Weight drop** (Merity et al. 2017, AWD-LSTM): one Bernoulli mask on the recurrent
  kernel per call, drawn before the time loop and scaled by ``1/(1-p)`` (as
  ``torch.nn.functional.dropout`` on the weight), so every step of the sequence sees the
  same dropped ``W_hh`` and the fused LSTM/GRU loops run unchanged on it.
* **Zoneout** (Krueger et al. 2016): in training each unit of each carry leaf (``h`` and,
  for the LSTM, ``c``, with independent masks) keeps its previous value with probability
  ``p``: ``new = m * prev + (1 - m) * step`` with ``m ~ Bernoulli(p)`` drawn per step.
  The ``(T, B, H)`` masks are drawn once per call and fed to the scan as inputs. At
  evaluation the expectation ``p * prev + (1 - p) * step``. Zoneout runs the plain masked
  scan of the step (the fused loops have no zoneout), at a cost measured in
  ``docs/cells/lstm_variants.md``.

Both follow nnx's train/eval switch: each is an ``nnx.Module`` with an attribute
``deterministic`` that ``model.eval()`` sets (and ``model.train()`` clears), and each draws
from the ``dropout`` stream of the ``rngs`` the cell was built with, like ``nnx.Dropout``.
A cell built with rate 0 holds neither, so its state is that of a cell without the option.

:class:`Regularised` is the mixin the cells use: ``_init_regularizers`` in ``__init__``,
``_w_hh()`` for the (dropped) recurrent kernel of one call, and ``_zoneout_scan`` for the
time loop when zoneout is on. Locked (variational) dropout between layers is
``StackedRecurrent(dropout_mode="locked")`` in :mod:`rnnjax.nn.layers`.

This module must never import a concrete cell, a layer, or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array, Carry


def _check_rate(owner: str, name: str, rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {rate}")
    return float(rate)


def _stream(rngs: nnx.Rngs | None, owner: str, name: str):
    if rngs is None:
        raise ValueError(f"{owner}: {name} > 0 needs rngs=nnx.Rngs(params=..., dropout=...)")
    return rngs["dropout"].fork()


class WeightDrop(nnx.Module):
    """DropConnect on a weight: ``w * m / (1 - p)``, ``m ~ Bernoulli(1 - p)``; identity in eval."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.rate = _check_rate("WeightDrop", "rate", rate)
        self.deterministic = deterministic
        self.rngs = _stream(rngs, "WeightDrop", "weight_drop")

    def __call__(self, w: Array) -> Array:
        if self.deterministic or self.rate == 0.0:
            return w
        keep = jax.random.bernoulli(self.rngs(), 1.0 - self.rate, w.shape)
        return jnp.where(keep, w / (1.0 - self.rate), jnp.zeros_like(w))


class Zoneout(nnx.Module):
    """Per-step zoneout masks and their application (see the module docstring)."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.rate = _check_rate("Zoneout", "rate", rate)
        self.deterministic = deterministic
        self.rngs = _stream(rngs, "Zoneout", "zoneout")

    def masks(self, T: int, carry: Carry) -> Carry | None:
        """``(T, B, H)`` bool per carry leaf, True where the unit keeps its previous
        value; None in eval mode (the expectation needs no mask)."""
        if self.deterministic:
            return None
        leaves, tree = jax.tree.flatten(carry)
        keys = jax.random.split(self.rngs(), len(leaves))
        return jax.tree.unflatten(tree, [
            jax.random.bernoulli(k, self.rate, (T, *leaf.shape)) for k, leaf in zip(keys, leaves)])

    def apply(self, prev: Carry, new: Carry, masks_t: Carry | None) -> Carry:
        """One step's zoneout: keep ``prev`` where the mask says so, or the expectation."""
        p = self.rate
        if masks_t is None:
            return jax.tree.map(lambda a, b: p * a + (1.0 - p) * b, prev, new)
        return jax.tree.map(lambda a, b, m: jnp.where(m, a, b), prev, new, masks_t)


def carry_output(carry: Carry) -> Array:
    """The output ``y`` of a carry: the array itself or its field ``h``."""
    return carry.h if hasattr(carry, "h") else carry


class Regularised:
    """Mixin for cells with a recurrent kernel ``w_hh``: weight drop and zoneout options.

    The cell writes ``_step(carry, xp_t, w_hh) -> (carry, y)`` and calls
    :meth:`_init_regularizers` in its ``__init__``.
    """

    def _init_regularizers(self, weight_drop: float, zoneout: float, rngs) -> None:
        owner = type(self).__name__
        self.weight_drop = _check_rate(owner, "weight_drop", weight_drop)
        self.zoneout = _check_rate(owner, "zoneout", zoneout)
        self.drop_hh = WeightDrop(weight_drop, rngs=rngs) if weight_drop > 0 else None
        self.zone = Zoneout(zoneout, rngs=rngs) if zoneout > 0 else None

    def _w_hh(self) -> Array:
        """The recurrent kernel for one call: ``w_hh``, DropConnect-ed in training."""
        w = self._p("w_hh")
        return w if self.drop_hh is None else self.drop_hh(w)

    def _zoned_step(self, step: Callable) -> Callable:
        """``step`` with zoneout; the returned step takes ``(xp_t, masks_t)`` inputs."""
        def zoned(carry, inp):
            xp_t, m_t = inp
            new, y = step(carry, xp_t)
            new = self.zone.apply(carry, new, m_t)
            # y in the step's own output dtype (the compute dtype; the carry may be wider).
            return new, carry_output(new).astype(y.dtype)
        return zoned

    def _zoneout_scan(self, step: Callable, carry, xp, mask, *, reverse, unroll, resets):
        """The plain masked scan of ``step`` with zoneout masks drawn for this call."""
        masks = self.zone.masks(xp.shape[0], carry)
        return masked_scan(self._zoned_step(step), carry, (xp, masks), mask, reverse=reverse,
                           unroll=unroll, resets=resets)

    def _step_with_regularizers(self, carry, xp):
        """The step form (``step_projected``): weight drop and zoneout drawn for this step."""
        step = lambda c, x: self._step(c, x, self._w_hh())  # noqa: E731
        if self.zone is None:
            return step(carry, xp)
        masks = self.zone.masks(1, carry)
        m0 = None if masks is None else jax.tree.map(lambda m: m[0], masks)
        return self._zoned_step(step)(carry, (xp, m0))
