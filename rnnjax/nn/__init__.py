"""Recurrent building blocks: cells, time loops and layers (see :mod:`rnnjax.nn.types`)."""

from rnnjax.nn.cells import (
    CELLS,
    ElmanCell,
    GRUCell,
    LSTMCell,
    RecurrentCell,
    make_cell,
    per_gate,
    register_cell,
    torch_uniform,
)
from rnnjax.nn.layers import Bidirectional, Recurrent, StackedRecurrent, make_rnn
from rnnjax.nn.scan import lengths_to_mask, masked_scan
from rnnjax.nn.types import LRUState, LSTMState

__all__ = [
    "CELLS", "ElmanCell", "GRUCell", "LSTMCell", "RecurrentCell", "make_cell", "per_gate",
    "register_cell", "torch_uniform", "Bidirectional", "Recurrent", "StackedRecurrent",
    "make_rnn", "lengths_to_mask", "masked_scan", "LSTMState", "LRUState",
]

# Parallel-scan cells; importing min_cells and lru registers 'min_gru', 'min_lstm' and 'lru'.
from rnnjax.nn.linear_scan import ScanMode, linear_scan, log_linear_scan  # noqa: E402
from rnnjax.nn.lru import LRUCell  # noqa: E402
from rnnjax.nn.min_cells import MinGRUCell, MinLSTMCell  # noqa: E402

__all__ += ["ScanMode", "linear_scan", "log_linear_scan", "MinGRUCell", "MinLSTMCell", "LRUCell"]
