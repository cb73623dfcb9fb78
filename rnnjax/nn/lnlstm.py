"""Layer-normalised LSTM (Ba et al. 2016), as haste's ``LayerNormLSTM``.

Layer norm of the input projection and of the recurrent pre-activations, separately,
each over the whole ``(4H,)`` gate vector with its own gain; the gate bias follows both;
and layer norm of the cell state, with gain and bias, before the output tanh::

    LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)                (biased variance, haste's eps)
    z   = LN(x W_ih) ⊙ γ_x + LN(h W_hh) ⊙ γ_h + b              b = b_ih + b_hh, (4H,)
    i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g;   h_t = o ⊙ tanh(LN(c_t) ⊙ γ_c + β_c)

Gate order here is rnnjax's/PyTorch's ``i, f, g, o`` (haste orders ``i, g, f, o``; the
maths is the same). The input half, ``LN(x W_ih) ⊙ γ_x + b``, depends on ``x`` only, so
it is hoisted out of the time loop into :meth:`LayerNormLSTMCell.project_inputs`. Gains
start at 1, ``β_c`` at 0, the forget bias at ``forget_bias`` as for the LSTM. The time
loop is the plain masked scan; weight drop and zoneout work as for the LSTM. Registered
as ``layernorm_lstm``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused
from rnnjax.nn.cell import register_cell
from rnnjax.nn.lstm import LSTMCell, lstm_gate_scale, lstm_gates
from rnnjax.nn.types import Array, LSTMState

#: haste's layer-norm epsilon.
LN_EPS = 1e-5


def layer_norm(v: Array, eps: float = LN_EPS) -> Array:
    """``(v - mean) / sqrt(var + eps)`` over the last axis (biased variance), no gain."""
    mean = jnp.mean(v, axis=-1, keepdims=True)
    d = v - mean
    return d * jnp.reciprocal(jnp.sqrt(jnp.mean(d * d, axis=-1, keepdims=True) + eps))


class LayerNormLSTMCell(LSTMCell):
    """Layer-normalised LSTM (see the module docstring). Carry :class:`LSTMState`.

    Parameters beyond the LSTM's: ``ln_x_gain``, ``ln_h_gain`` ``(4H,)``, ``ln_c_gain``,
    ``ln_c_bias`` ``(H,)``. Arguments as :class:`rnnjax.nn.LSTMCell`; ``impl`` selects only
    the input projection (no fused loop).
    """

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        H, dt = hidden_features, self.param_dtype
        self.ln_x_gain = nnx.Param(jnp.ones((4 * H,), dt))
        self.ln_h_gain = nnx.Param(jnp.ones((4 * H,), dt))
        self.ln_c_gain = nnx.Param(jnp.ones((H,), dt))
        self.ln_c_bias = nnx.Param(jnp.zeros((H,), dt))

    def _unfusable(self):
        return "the fused LSTM loop has no layer norm"

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 4H)``: ``LN(x W_ih) ⊙ γ_x + b_ih + b_hh``."""
        self.check_features(x)
        w = self._p("w_ih")
        xw = fused.dense_projection(self._cast(x), w, jnp.zeros((w.shape[-1],), w.dtype),
                                    impl=self.impl, where=type(self).__name__)
        return layer_norm(xw) * self._p("ln_x_gain") + self._projection_bias()

    def _gates(self, carry, xp, w_hh=None):
        w_hh = self._p("w_hh") if w_hh is None else w_hh
        pre = xp + layer_norm(self._cast(carry[0]) @ w_hh) * self._p("ln_h_gain")
        return lstm_gates(pre, lstm_gate_scale(self.hidden_features, xp.dtype))

    def _step(self, carry, xp, w_hh):
        i, f, gs, o = self._gates(carry, xp, w_hh)
        c = f * carry[1] + i * (2 * gs - 1)
        h = o * jnp.tanh(layer_norm(c) * self._p("ln_c_gain") + self._p("ln_c_bias"))
        return LSTMState(h, c), self._cast(h)


register_cell("layernorm_lstm", LayerNormLSTMCell)
