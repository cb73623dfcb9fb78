"""LSTM with peephole connections (Gers & Schmidhuber 2000), PyTorch layout plus peepholes.

Diagonal peepholes let the gates see the cell state: ``c_{t-1}`` feeds the input and
forget gates, the new ``c_t`` feeds the output gate::

    i, f, g, o = split(x W_ih + b_ih + h W_hh + b_hh)           gate order i, f, g, o
    i = σ(i + p_i ⊙ c_{t-1});   f = σ(f + p_f ⊙ c_{t-1});   g = tanh(g)
    c_t = f ⊙ c_{t-1} + i ⊙ g;  o = σ(o + p_o ⊙ c_t);      h_t = o ⊙ tanh(c_t)

``p_i, p_f, p_o`` are ``(H,)`` and start at zero, so a new cell computes what an
:class:`rnnjax.nn.LSTMCell` with the same weights computes. The time loop is the plain
masked scan (the fused LSTM loop has no peepholes); weight drop and zoneout work as for
the LSTM. Registered as ``peephole_lstm``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import register_cell
from rnnjax.nn.lstm import LSTMCell
from rnnjax.nn.types import LSTMState


class PeepholeLSTMCell(LSTMCell):
    """LSTM with diagonal peepholes (see the module docstring). Carry :class:`LSTMState`.

    Arguments as :class:`rnnjax.nn.LSTMCell`; ``impl`` selects only the input projection
    (``"fused"`` raises: there is no fused peephole loop).
    """

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        z = jnp.zeros((hidden_features,), self.param_dtype)
        self.p_i, self.p_f, self.p_o = nnx.Param(z), nnx.Param(z), nnx.Param(z)

    def _unfusable(self):
        return "the fused LSTM loop has no peepholes"

    def _peephole_gates(self, carry, xp, w_hh):
        """``(i, f, g, pre_o)``: the gates that read ``c_{t-1}``, and ``o``'s pre-activation."""
        h, c = carry
        H = self.hidden_features
        pre = xp + self._cast(h) @ w_hh
        i = jax.nn.sigmoid(pre[:, :H] + self._p("p_i") * c)
        f = jax.nn.sigmoid(pre[:, H : 2 * H] + self._p("p_f") * c)
        g = jnp.tanh(pre[:, 2 * H : 3 * H])
        return i, f, g, pre[:, 3 * H :]

    def _step(self, carry, xp, w_hh):
        i, f, g, pre_o = self._peephole_gates(carry, xp, w_hh)
        c = f * carry[1] + i * g
        o = jax.nn.sigmoid(pre_o + self._p("p_o") * c)
        h = o * jnp.tanh(c)
        return LSTMState(h, c), self._cast(h)

    def gate_activations(self, carry, xp_t):
        i, f, g, pre_o = self._peephole_gates(carry, xp_t, self._p("w_hh"))
        c = f * carry[1] + i * g
        o = jax.nn.sigmoid(pre_o + self._p("p_o") * c)
        return {"i": ("sigmoid", i), "f": ("sigmoid", f), "g": ("tanh", g), "o": ("sigmoid", o)}


register_cell("peephole_lstm", PeepholeLSTMCell)
