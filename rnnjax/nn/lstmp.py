"""LSTM with a recurrent projection (Sak et al. 2014): ``torch.nn.LSTM(proj_size=P)``.

The output ``h`` is projected from ``H`` to ``P < H`` units, and the projection is what
recurs, so ``W_hh`` is ``(P, 4H)``::

    i, f, g, o = split(x W_ih + b_ih + h_{t-1} W_hh + b_hh)      gate order i, f, g, o
    c_t = σ(f) c_{t-1} + σ(i) tanh(g);   h_t = (σ(o) tanh(c_t)) W_hr

Parameters map one to one to PyTorch's (see :mod:`rnnjax.interop`): ``w_ih`` ``(E, 4H)``,
``w_hh`` ``(P, 4H)``, ``b_ih``, ``b_hh`` ``(4H,)``, ``w_hr`` ``(H, P)`` = ``weight_hr_l0.T``.
Carry :class:`LSTMState` ``(h (B, P), c (B, H))``; output ``h`` ``(B, P)``, so
``output_features = P``. The time loop is the plain masked scan (the fused LSTM loop
assumes a square recurrence); weight drop (on ``w_hh``) and zoneout work as for the LSTM.
Registered as ``lstmp``; ``proj_size`` is set through ``model.cell_kwargs.proj_size``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.cell import register_cell
from rnnjax.nn.gated import default_kernel_init, default_recurrent_init, per_gate
from rnnjax.nn.lstm import LSTMCell
from rnnjax.nn.types import Array, LSTMState


class LSTMPCell(LSTMCell):
    """LSTM with a recurrent projection to ``proj_size`` units (see the module docstring).

    Args:
      proj_size: P, ``1 <= P < H`` (PyTorch's condition).
      projection_init: initialiser of ``w_hr`` ``(H, P)``.
      Others as :class:`rnnjax.nn.LSTMCell`; ``impl`` selects only the input projection.
    """

    def __init__(self, in_features: int, hidden_features: int, *, proj_size: int,
                 projection_init=default_kernel_init, **kwargs):
        if not 1 <= proj_size < hidden_features:
            raise ValueError(f"LSTMPCell: proj_size must be in [1, hidden_features="
                             f"{hidden_features}), got {proj_size}")
        self.proj_size = proj_size
        super().__init__(in_features, hidden_features, **kwargs)
        rngs = kwargs["rngs"]
        H, P, dt = hidden_features, proj_size, self.param_dtype
        rec_init = kwargs.get("recurrent_kernel_init", default_recurrent_init)
        self.w_hh = nnx.Param(per_gate(rec_init, 4)(rngs.params(), (P, 4 * H), dt))
        self.w_hr = nnx.Param(projection_init(rngs.params(), (H, P), dt))

    @property
    def output_features(self) -> int:
        return self.proj_size

    @property
    def state_width(self) -> int:
        return self.proj_size

    def _unfusable(self):
        return "the fused LSTM loop has no recurrent projection"

    def _step(self, carry, xp, w_hh):
        i, f, gs, o = self._gates(carry, xp, w_hh)
        c = f * carry[1] + i * (2 * gs - 1)
        h = self._cast(o * jnp.tanh(c)) @ self._p("w_hr")  # in the compute dtype
        return LSTMState(self._keep(h, carry[0]), c), h

    def recurrent_matrices(self) -> dict[str, Array]:
        """``{gate: W_hr W_hh,gate}`` ``(H, H)``: one step's unprojected output to the next
        step's gate pre-activation; its nonzero eigenvalues are those of the ``(P, P)``
        recurrence ``W_hh,gate W_hr``."""
        w, wr, H = self.w_hh[...], self.w_hr[...], self.hidden_features
        return {name: wr @ w[:, k * H : (k + 1) * H]
                for k, name in enumerate(self.gate_names)}

    def initialize_carry(self, batch_shape, dtype=None):
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        dtype = dtype or self.carry_dtype
        return LSTMState(jnp.zeros((*batch_shape, self.proj_size), dtype),
                         jnp.zeros((*batch_shape, self.hidden_features), dtype))


register_cell("lstmp", LSTMPCell)
