"""Layer-normalised GRU (Ba et al. 2016), as haste's ``LayerNormGRU``.

Layer norm (:func:`rnnjax.nn.lnlstm.layer_norm`) of the input projection and of the
recurrent projection, separately, each over its ``(3H,)`` vector with its own gain,
biases after the norms, in the cuDNN form (the reset gate multiplies the recurrent
candidate term)::

    a = LN(x W_ih) ⊙ γ_x + b_ih;   u = LN(h W_hh) ⊙ γ_h + b_hh       gate order r, z, n
    r = σ(a_r + u_r);  z = σ(a_z + u_z);  n = tanh(a_n + r ⊙ u_n);  h' = (1 - z) n + z h

(haste orders ``z, r, g``.) ``LN(x W_ih) ⊙ γ_x + b_ih + [b_hr, b_hz, 0]`` is hoisted into
:meth:`LayerNormGRUCell.project_inputs`. Plain masked scan; weight drop and zoneout as
for the GRU. Registered as ``layernorm_gru``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused
from rnnjax.nn.cell import register_cell
from rnnjax.nn.gru import GRUCell
from rnnjax.nn.lnlstm import layer_norm
from rnnjax.nn.types import Array


class LayerNormGRUCell(GRUCell):
    """Layer-normalised GRU (see the module docstring). Carry and output ``h`` ``(B, H)``.

    Parameters beyond the GRU's: ``ln_x_gain``, ``ln_h_gain`` ``(3H,)``. Arguments as
    :class:`rnnjax.nn.GRUCell` without ``reset_before`` (always the cuDNN form).
    """

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        if kwargs.get("reset_before"):
            raise ValueError("LayerNormGRUCell: reset_before=True is not supported; the cell "
                             "is haste's cuDNN form (reset gate on the recurrent term)")
        super().__init__(in_features, hidden_features, **kwargs)
        H, dt = hidden_features, self.param_dtype
        self.ln_x_gain = nnx.Param(jnp.ones((3 * H,), dt))
        self.ln_h_gain = nnx.Param(jnp.ones((3 * H,), dt))

    def _unfusable(self):
        return "the fused GRU loop has no layer norm"

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 3H)``: ``LN(x W_ih) ⊙ γ_x + b_ih + [b_hr, b_hz, 0]``."""
        self.check_features(x)
        w = self._p("w_ih")
        xw = fused.dense_projection(self._cast(x), w, jnp.zeros((w.shape[-1],), w.dtype),
                                    impl=self.impl, where=type(self).__name__)
        return layer_norm(xw) * self._p("ln_x_gain") + self._projection_bias()

    def _gates(self, h, xp, w_hh=None):
        H = self.hidden_features
        w_hh = self._p("w_hh") if w_hh is None else w_hh
        u = layer_norm(self._cast(h) @ w_hh) * self._p("ln_h_gain")
        r = jax.nn.sigmoid(xp[:, :H] + u[:, :H])
        z = jax.nn.sigmoid(xp[:, H : 2 * H] + u[:, H : 2 * H])
        hn = u[:, 2 * H :] + self._p("b_hh")[2 * H :]
        n = jnp.tanh(xp[:, 2 * H :] + r * hn)
        return r, z, n, hn


register_cell("layernorm_gru", LayerNormGRUCell)
