"""The shape glossary and the small types shared by every recurrent module.

Shape letters, used in every docstring and variable name in rnnjax:

====  =====================================================================
B     batch
T     time (target time in seq2seq)
S     source time (seq2seq encoder)
E     input or embedding features
H     hidden features
G     number of gates; ``G*H`` is the stacked gate width (LSTM G=4, GRU G=3)
V     vocabulary size
K     beam size
L     layers
D     directions (1 or 2)
====  =====================================================================

Arrays are batch-major ``(B, T, E)`` unless a name or argument says time-major
``(T, B, E)``. Masks are boolean, ``True`` where a step is valid.

This module holds no computation; it must never import from the rest of rnnjax.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array
#: A recurrent carry: one array ``(B, H)`` for Elman/GRU, an :class:`LSTMState` for LSTM,
#: or any pytree of ``(B, ...)`` arrays for other cells.
Carry = Any


class LSTMState(NamedTuple):
    """The LSTM carry, in PyTorch's order ``(h, c)``; both ``(B, H)``."""

    h: Array
    c: Array


class LRUState(NamedTuple):
    """The LRU carry (:mod:`rnnjax.nn.lru`): the last output ``h`` and the complex state
    ``re + i im``; all ``(B, H)``."""

    h: Array
    re: Array
    im: Array
