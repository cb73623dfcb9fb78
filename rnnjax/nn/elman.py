"""The Elman RNN (tanh or relu), PyTorch layout: ``torch.nn.RNN(nonlinearity=...)``.

``h' = act(x W_ih + b_ih + h W_hh + b_hh)``; carry and output ``h`` ``(B, H)``.
Registered as ``elman`` / ``rnn_tanh`` (tanh) and ``rnn_relu``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from rnnjax.nn.cell import register_cell
from rnnjax.nn.gated import GatedCell
from rnnjax.nn.types import Array


class ElmanCell(GatedCell):
    """Elman RNN: ``h' = act(x W_ih + b_ih + h W_hh + b_hh)``, act tanh or relu.

    Carry and output: ``h`` ``(B, H)``, the carry in :attr:`carry_dtype` and the output in
    the compute dtype (the whole step is one gate, so only the carry is cast back). Matches
    ``torch.nn.RNN(nonlinearity=...)``.
    Other arguments as :class:`rnnjax.nn.gated.GatedCell` (``impl`` selects only the
    input projection here: the time loop is always the plain scan).
    """

    num_gates = 1
    gate_names = ("h",)
    activations: ClassVar[dict[str, Callable]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}

    def __init__(self, in_features: int, hidden_features: int, *, activation: str = "tanh",
                 **kwargs):
        if activation not in self.activations:
            raise ValueError(
                f"ElmanCell: unknown activation {activation!r}; known: {sorted(self.activations)}"
            )
        self.activation = activation
        super().__init__(in_features, hidden_features, **kwargs)

    def _gate(self, h: Array, xp: Array) -> Array:
        """The cell's one gate: ``act(xp + h W_hh)``, the new ``h``."""
        return self.activations[self.activation](xp + self._cast(h) @ self._p("w_hh"))

    def step_projected(self, carry, xp):
        h = self._gate(carry, xp)  # in the compute dtype; the carry keeps its own
        return self._keep(h, carry), h

    def gate_activations(self, carry, xp_t):
        # Only tanh saturates; relu (or a subclass's own activation) has no gate to report.
        return {"h": ("tanh", self._gate(carry, xp_t))} if self.activation == "tanh" else {}

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


register_cell("elman", ElmanCell, activation="tanh")
register_cell("rnn_tanh", ElmanCell, activation="tanh")
register_cell("rnn_relu", ElmanCell, activation="relu")
