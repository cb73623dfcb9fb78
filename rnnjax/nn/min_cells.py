"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Both cells drop the hidden state from their gates, so every gate is a function
of ``x_t`` alone and the recurrence is the elementwise linear map
``h_t = a_t * h_{t-1} + b_t``. The input projection (one ``(E, G*H)`` matmul,
hoisted out of the time loop as for every cell) therefore holds all the
learnable work, and the time loop is a :mod:`rnnjax.nn.linear_scan`, which can
run in parallel over time (``scan_mode``).

Parameterisations (``k`` are pre-activations from the projection)::

    minGRU   z = σ(k_z);              h_t = (1 - z) h_{t-1} + z h~,   h~ = cand(k_h)
    minLSTM  f = σ(k_f), i = σ(k_i);  f' = f / (f + i), i' = i / (f + i)
                                      h_t = f' h_{t-1} + i' h~,       h~ = cand(k_h)

with ``cand(k) = k`` when ``log_space=False`` (the paper's sequential form) and
``cand(k) = g(k)``, ``g(k) = k + 0.5 if k >= 0 else σ(k)``, when
``log_space=True`` (the paper's Appendix B, recommended for training): ``g`` is
positive, so ``b = z h~`` has a logarithm and the scan may run in log space
with ``log z = -softplus(-k_z)``, ``log(1 - z) = -softplus(k_z)``.

One deliberate difference from the paper's code: the paper feeds ``g(h0)`` to
the log-space scan because it needs ``log h0``. Here :func:`log_linear_scan`
takes ``h0`` in real space (its contribution is ``(prod a) h0``), so the carry is
used as it is. That keeps the carry composable: the step form, a scan, and a
scan split in chunks whose final carry feeds the next all give the same ``h``,
and a zero initial carry means zero (the paper's default start ``g(0) = 0.5``
is one ``initial_carry`` away).

Projection layout: ``xp = x W_ih + b_ih`` is ``(..., G*H)`` with blocks
``[k_z, k_h]`` (minGRU, G=2) or ``[k_f, k_i, k_h]`` (minLSTM, G=3). There is no
``w_hh``/``b_hh``. Carry and output: ``h`` ``(B, H)``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused
from rnnjax.nn.cell import RecurrentCell, check_impl, register_cell
from rnnjax.nn.gated import Initializer, default_bias_init, default_kernel_init
from rnnjax.nn.linear_scan import ScanMode, linear_scan, log_linear_scan
from rnnjax.nn.types import Array


def g(x: Array) -> Array:
    """The paper's positive candidate map: ``x + 0.5`` for ``x >= 0``, ``σ(x)`` below.

    Continuous at 0 (both sides give 0.5), strictly increasing, and linear for
    positive inputs so that ``h`` does not saturate the way ``tanh`` would.
    """
    # The slope at 0 is the right-hand one, 1 (relu would give 0 there: a dead
    # gradient for a zero pre-activation, which zero biases make common).
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
    """``log g(x)`` computed without forming ``g`` (finite for every finite ``x``)."""
    # Clamping the unused branch keeps log() off x <= -0.5, whose NaN/inf would
    # leak into the gradient through where(); jnp.where (not relu) keeps slope 2 at 0.
    pos = jnp.where(x >= 0, x, 0.0)
    return jnp.where(x >= 0, jnp.log(pos + 0.5), -jax.nn.softplus(-x))


class _MinCell(RecurrentCell):
    """Shared parameters and scan plumbing; subclasses map ``xp`` to the recurrence.

    Subclasses implement :meth:`_coefficients` (real ``a, b``) and
    :meth:`_log_coefficients` (``log a, log b``), both from projected inputs
    ``xp`` ``(..., G*H)`` to ``(..., H)`` arrays.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        log_space: bool = True,
        scan_mode: ScanMode | str = ScanMode.ASSOCIATIVE,
        impl: str = "auto",
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        name = type(self).__name__
        scan_mode = ScanMode.parse(scan_mode)
        if scan_mode is ScanMode.LOG_SPACE and not log_space:
            raise ValueError(
                f"{name}: scan_mode='log_space' needs log_space=True (the real-space candidate "
                f"h~ can be negative and has no logarithm); use scan_mode='associative' or "
                f"'sequential', or set log_space=True"
            )
        compute = jnp.dtype(dtype or param_dtype)
        self.impl = check_impl(name, impl, unfusable=None if compute in fused.FUSED_DTYPES else
                               f"the fused projection runs in float32 or float64, this cell "
                               f"computes in {compute}")
        self.log_space = log_space
        self.scan_mode = scan_mode
        gh = self.num_gates * hidden_features
        self.w_ih = nnx.Param(kernel_init(rngs.params(), (in_features, gh), param_dtype))
        self.b_ih = nnx.Param(bias_init(rngs.params(), (gh,), param_dtype))

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., G*H)``: ``x W_ih + b_ih``, by the fused projection
        (:func:`rnnjax.nn.fused.project`, a fast backward) unless ``impl="scan"``."""
        self.check_features(x)
        return fused.dense_projection(self._cast(x), self._p("w_ih"), self._p("b_ih"),
                                      impl=self.impl, where=type(self).__name__)

    def _candidate(self, k_h: Array) -> Array:
        return g(k_h) if self.log_space else k_h

    def _coefficients(self, xp: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def _log_coefficients(self, xp: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def step_projected(self, carry, xp):
        # Real space whatever the mode: one step has nothing to parallelise, and the
        # scan modes are tested to agree with this loop.
        # Gates in float32 at least, as the scan computes them (see scan_projected).
        a, b = self._coefficients(xp.astype(jnp.promote_types(xp.dtype, jnp.float32)))
        h = a * carry + b
        return self._keep(h, carry), self._cast(h)

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """Runs the linear scan chosen by ``scan_mode`` over ``xp`` ``(T, B, G*H)``.

        Same contract as :meth:`RecurrentCell.scan_projected`: returns
        ``(h_last, ys)`` with ``ys`` ``(T, B, H)``, zero where ``mask`` is False.
        """
        # Gates in float32 too (softplus/sigmoid in bfloat16 would cost the accuracy
        # the float32 scan keeps); results go back to the input dtypes.
        xp32 = xp.astype(jnp.promote_types(xp.dtype, jnp.float32))
        if self.log_space:
            scan, (a, b) = log_linear_scan, self._log_coefficients(xp32)
        else:
            scan, (a, b) = linear_scan, self._coefficients(xp32)
        h_last, ys = scan(a, b, carry, mask, reverse=reverse, mode=self.scan_mode, unroll=unroll,
                          resets=resets)
        return h_last.astype(carry.dtype), ys.astype(xp.dtype)

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


class MinGRUCell(_MinCell):
    """minGRU: ``z = σ(k_z)``, ``h_t = (1 - z) h_{t-1} + z h~`` (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H.
      log_space: use the candidate ``g(k_h)`` (positive) so the scan may run in
        log space; False uses ``h~ = k_h`` and real-space scans only.
      scan_mode: :class:`ScanMode` or ``'sequential' | 'associative' | 'log_space'``
        for :meth:`scan_projected`; ``'log_space'`` needs ``log_space=True``.
        Every mode gives the same numbers up to float32 rounding; ASSOCIATIVE is
        the default because it is parallel over time yet accurate at any ``T``
        (LOG_SPACE's relative error grows with T: 7e-4 at T=4096 against 2.5e-7,
        see :mod:`rnnjax.nn.linear_scan`). On CPUs SEQUENTIAL is faster.
      impl: ``"auto"`` | ``"fused"`` | ``"scan"`` for the input projection: the fused
        projection (a custom VJP with a fast backward) or, with ``"scan"``, a plain
        matmul that forward-mode autodiff can go through.
    """

    num_gates = 2

    def _coefficients(self, xp):
        H = self.hidden_features
        z = jax.nn.sigmoid(xp[..., :H])
        return 1.0 - z, z * self._candidate(xp[..., H:])

    def _log_coefficients(self, xp):
        H = self.hidden_features
        k_z = xp[..., :H]
        # log(1 - σ(k)) = -softplus(k), log σ(k) = -softplus(-k): no 1 - z cancellation.
        return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(xp[..., H:])

    def gate_activations(self, carry, xp_t):
        return {"z": ("sigmoid", jax.nn.sigmoid(xp_t[:, : self.hidden_features]))}


class MinLSTMCell(_MinCell):
    """minLSTM: ``f' h_{t-1} + i' h~`` with ``f' = f/(f+i)``, ``i' = i/(f+i)``.

    ``f = σ(k_f)``, ``i = σ(k_i)``; the normalisation makes ``f' + i' = 1`` so the
    scale of ``h`` does not drift with time. Arguments as :class:`MinGRUCell`.
    """

    num_gates = 3

    def _coefficients(self, xp):
        H = self.hidden_features
        s = jax.nn.sigmoid(xp[..., : 2 * H])
        f, i = s[..., :H], s[..., H:]
        total = f + i
        return f / total, i / total * self._candidate(xp[..., 2 * H :])

    def _log_coefficients(self, xp):
        H = self.hidden_features
        # log f' = -softplus(log i - log f) with log σ(k) = -softplus(-k) (paper, App. B).
        diff = jax.nn.softplus(-xp[..., :H]) - jax.nn.softplus(-xp[..., H : 2 * H])
        return -jax.nn.softplus(diff), -jax.nn.softplus(-diff) + log_g(xp[..., 2 * H :])

    def gate_activations(self, carry, xp_t):
        s = jax.nn.sigmoid(xp_t[:, : 2 * self.hidden_features])
        H = self.hidden_features
        return {"f": ("sigmoid", s[:, :H]), "i": ("sigmoid", s[:, H:])}


register_cell("min_gru", MinGRUCell)
register_cell("min_lstm", MinLSTMCell)
