"""IndRNN (Li et al. 2018, "Independently Recurrent Neural Network").

``h_t = act(x_t W + b + u ⊙ h_{t-1})`` with an elementwise recurrent weight ``u`` ``(H,)``:
each unit sees only its own past, so the gradient through time of unit ``k`` is a product
of ``u_k act'`` terms that the constraint ``|u| <= u_max`` keeps from exploding (the paper
uses ``u_max = 2^(1/T)`` for ReLU, so that ``|u|^T <= 2``).

The constraint is a clip in the forward pass, ``u_eff = clip(u, -u_max, u_max)``, rather than
the paper's projection after each optimiser step: the cell then needs nothing from the
trainer. The two differ past the bound: a projected weight sits on it and moves back inside
as soon as its gradient points inward, while a clipped one gets no gradient at all (the
clip's slope is 0 there) and stays out, computing with ``u_max`` until weight decay, if
any, brings it back. ``u_eff`` is what the cell computes with and what
:meth:`IndRNNCell.recurrent_matrices` reports.

Time loops: with ``activation="identity"`` the recurrence is linear,
``h_t = u ⊙ h_{t-1} + (x_t W + b)``, and runs on :func:`rnnjax.nn.linear_scan.linear_scan`
(``scan_mode`` sequential or associative, parallel over time); with ``relu`` or ``tanh`` it
is the plain masked scan of the step.

Initialisation: ``kernel_init`` is LeCun normal like the other cells (the paper's
``N(0, 0.001²)`` is ``kernel_std=0.001``) and ``u ~ U(u_init)``, by default ``U(0, 1)``
as in the paper, then clipped to ``u_max``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused
from rnnjax.nn.cell import RecurrentCell, check_impl, register_cell
from rnnjax.nn.gated import Initializer, default_bias_init, default_kernel_init
from rnnjax.nn.linear_scan import ScanMode, linear_scan
from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array


class IndRNNCell(RecurrentCell):
    """IndRNN: ``h' = act(x W + b + u ⊙ h)`` (see the module docstring).

    Carry and output: ``h`` ``(B, H)``, the carry in :attr:`carry_dtype`, the output in the
    compute dtype. Projection: ``xp = x W + b`` ``(..., H)``.

    Args:
      activation: ``"relu"`` (the paper's), ``"tanh"`` or ``"identity"`` (linear: the time
        loop is a :func:`linear_scan`).
      u_max: the bound on ``|u|``, applied as a clip in the forward pass; None: no bound.
      scan_mode: ``"sequential"`` | ``"associative"`` for ``activation="identity"``.
      impl: ``"auto"`` | ``"fused"`` | ``"scan"`` for the input projection, as
        :class:`rnnjax.nn.MinGRUCell`.
      kernel_init, bias_init: initialisers of ``w_ih`` ``(E, H)`` and ``b`` ``(H,)``.
      u_init: ``(lo, hi)``: ``u ~ U(lo, hi)`` at initialisation (then clipped to ``u_max``).
      kernel_std: if set, ``w_ih ~ N(0, kernel_std²)`` instead of ``kernel_init`` (the
        paper's adding-problem setting is 0.001: a ReLU unit with ``u`` near 1 sums its
        inputs over T steps, and small input weights keep that sum small at the start).
    """

    activations: ClassVar[dict[str, Callable]] = {
        "relu": jax.nn.relu, "tanh": jnp.tanh, "identity": lambda v: v}

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation: str = "relu",
        u_max: float | None = None,
        u_init: tuple[float, float] = (0.0, 1.0),
        kernel_std: float | None = None,
        scan_mode: ScanMode | str = ScanMode.ASSOCIATIVE,
        impl: str = "auto",
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if activation not in self.activations:
            raise ValueError(f"IndRNNCell: unknown activation {activation!r}; known: "
                             f"{sorted(self.activations)}")
        if u_max is not None and not u_max > 0:
            raise ValueError(f"IndRNNCell: u_max must be > 0 or None, got {u_max}")
        scan_mode = ScanMode.parse(scan_mode)
        if scan_mode is ScanMode.LOG_SPACE:
            raise ValueError("IndRNNCell: scan_mode='log_space' needs positive coefficients; "
                             "use 'associative' or 'sequential'")
        compute = jnp.dtype(dtype or param_dtype)
        self.impl = check_impl("IndRNNCell", impl, unfusable=None if compute in
                               fused.FUSED_DTYPES else f"the fused projection runs in float32 "
                               f"or float64, this cell computes in {compute}")
        self.activation = activation
        self.u_max = None if u_max is None else float(u_max)
        self.scan_mode = scan_mode
        lo, hi = u_init
        if kernel_std is not None:
            kernel_init = nnx.initializers.normal(kernel_std)
        self.w_ih = nnx.Param(kernel_init(rngs.params(), (in_features, hidden_features),
                                          param_dtype))
        self.b_ih = nnx.Param(bias_init(rngs.params(), (hidden_features,), param_dtype))
        u = jax.random.uniform(rngs.params(), (hidden_features,), param_dtype, lo, hi)
        self.u = nnx.Param(u if u_max is None else jnp.clip(u, -u_max, u_max))

    def recurrent_weight(self) -> Array:
        """``u_eff`` ``(H,)``: ``u`` clipped to ``[-u_max, u_max]``."""
        u = self._p("u")
        return u if self.u_max is None else jnp.clip(u, -self.u_max, self.u_max)

    def project_inputs(self, x: Array) -> Array:
        self.check_features(x)
        return fused.dense_projection(self._cast(x), self._p("w_ih"), self._p("b_ih"),
                                      impl=self.impl, where="IndRNNCell")

    def _step(self, h, xp, u):
        # u * h is elementwise in the carry's dtype (float32 under a bfloat16 policy).
        h = self.activations[self.activation](xp + u * h)
        return h, self._cast(h)

    def step_projected(self, carry, xp):
        return self._step(carry, xp, self.recurrent_weight())

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        u = self.recurrent_weight()
        if self.activation == "identity":
            h, ys = linear_scan(jnp.broadcast_to(u, xp.shape), xp, carry, mask,
                                reverse=reverse, mode=self.scan_mode, unroll=unroll,
                                resets=resets)
            return h.astype(carry.dtype), ys.astype(xp.dtype)
        # relu/tanh: the plain scan, with u clipped once for the whole loop.
        return masked_scan(partial(self._step, u=u), carry, xp, mask, reverse=reverse,
                           unroll=unroll, resets=resets)

    def gate_activations(self, carry, xp_t):
        h, _ = self.step_projected(carry, xp_t)
        return {"h": ("tanh", h)} if self.activation == "tanh" else {}

    def recurrent_matrices(self):
        return {"u": jnp.diag(self.recurrent_weight())}

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


register_cell("indrnn", IndRNNCell)
