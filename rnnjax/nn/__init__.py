"""Recurrent building blocks: cells, time loops and layers (see :mod:`rnnjax.nn.types`).

The cell protocol and the registry are in :mod:`rnnjax.nn.cell`; each cell family is
one module that registers itself (the registry imports them all before its first lookup).
"""

from rnnjax.nn.cell import CELLS, RecurrentCell, cell_options, known_cells, make_cell, register_cell
from rnnjax.nn.elman import ElmanCell
from rnnjax.nn.gated import GatedCell, per_gate, torch_uniform
from rnnjax.nn.gru import GRUCell
from rnnjax.nn.layers import Bidirectional, Recurrent, StackedRecurrent, make_rnn
from rnnjax.nn.linear_scan import ScanMode, linear_scan, log_linear_scan
from rnnjax.nn.lru import LRUCell
from rnnjax.nn.lstm import LSTMCell
from rnnjax.nn.min_cells import MinGRUCell, MinLSTMCell
from rnnjax.nn.scan import lengths_to_mask, masked_scan
from rnnjax.nn.types import LRUState, LSTMState

__all__ = [
    "CELLS",
    "Bidirectional",
    "ElmanCell",
    "GRUCell",
    "GatedCell",
    "LRUCell",
    "LRUState",
    "LSTMCell",
    "LSTMState",
    "MinGRUCell",
    "MinLSTMCell",
    "Recurrent",
    "RecurrentCell",
    "ScanMode",
    "StackedRecurrent",
    "cell_options",
    "known_cells",
    "lengths_to_mask",
    "linear_scan",
    "log_linear_scan",
    "make_cell",
    "make_rnn",
    "masked_scan",
    "per_gate",
    "register_cell",
    "torch_uniform",
]
