"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences").

A diagonal, complex, linear recurrence with an exponential parameterisation of
its eigenvalues and a normalisation of its input, read out by a real linear map::

    λ   = exp(-exp(ν_log) + i exp(θ_log))          (H,) complex, |λ| < 1 always
    γ   = exp(γ_log)                               (H,), initialised to sqrt(1 - |λ|²)
    s_t = λ ⊙ s_{t-1} + γ ⊙ (B x_t)                (B, H) complex state
    y_t = act(Re(C s_t) + D x_t)                   (B, H) real output

``B`` (complex, ``(E, H)``), ``C`` (complex, ``(H, H)``) and ``D`` (real, ``(E, H)``) are
dense. Like minGRU the recurrence is linear in ``s`` with coefficients that do not
depend on ``s``, so the time loop is a :func:`rnnjax.nn.linear_scan.linear_scan`
(complex ``a = λ``, ``b = γ ⊙ B x``), parallel over time in ``ASSOCIATIVE`` mode.

Initialisation, as in the paper's code: ``|λ|`` uniform on the ring
``r_min <= |λ| <= r_max`` (uniform in area), phase uniform in ``[0, max_phase]``,
``B`` entries ``N(0, 1/(2E))`` per real/imaginary part, ``C`` entries
``N(0, 1/H)``, ``D`` the paper's ``N(0, 1)`` diagonal when ``E == H`` and
``N(0, 1/E)`` dense otherwise.

The output nonlinearity. The paper's LRU is linear from input to output; each layer
of its network follows it with a position-wise MLP or GLU, inside a residual block.
Without a nonlinearity a stack of LRU cells would be one linear map of the input
history (it could not, for example, multiply two input channels, which the adding
problem needs). ``activation='gelu'`` (the default; the tanh form, as ``jax.nn.gelu``)
puts the paper's GELU on the cell's output, so that stacked cells work like the other cells;
``activation='none'`` gives the bare LRU for use inside a block of your own.

Differences from the paper, both made so that the cell composes with the rest of
rnnjax (layers, bidirectional concatenation, seq2seq bridges, beam search), which
assume every carry leaf is ``(B, H)``:

* the state dimension ``N`` equals ``hidden_features`` (the paper allows ``N != H``);
* ``D`` is a dense ``(E, H)`` matrix, which also lets ``E != H`` (the paper's ``D`` is a
  diagonal of an ``H -> H`` layer); its initialisation keeps the paper's diagonal when
  ``E == H``.

The paper wraps the LRU in a block (normalisation, GLU/MLP, residual); here it is a
cell like the others, stacked by :func:`rnnjax.nn.make_rnn` with dropout between
layers.

Carry: :class:`LRUState` ``(h, re, im)``: ``h`` the last output ``y`` (what pooling,
attention and bridges read as "the hidden state"), ``re``/``im`` the complex state.
On a masked step the whole carry stays unchanged, so after a ragged sequence ``h``
is each row's output at its own last valid step, as for the other cells.

Projection layout: ``xp = x W_ih`` is ``(..., 3H)`` with blocks
``[Re(B x), Im(B x), D x]``; there is no bias (the paper has none). ``w_out`` is
``(2H, H)``, ``[Re(C)ᵀ; -Im(C)ᵀ]``, so ``y = act([Re s, Im s] w_out + D x)``.

Cells never import layers, data or training code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused
from rnnjax.nn.cell import RecurrentCell, check_impl, register_cell
from rnnjax.nn.linear_scan import ScanMode, linear_scan
from rnnjax.nn.types import Array, LRUState

__all__ = ["LRUCell", "ring_init"]


def ring_init(key: jax.Array, n: int, r_min: float, r_max: float, max_phase: float,
              dtype=jnp.float32) -> tuple[Array, Array]:
    """``(ν_log, θ_log)`` for ``n`` eigenvalues uniform on the ring ``r_min <= |λ| <= r_max``
    (uniform in area, as the paper samples them) with phases uniform in ``[0, max_phase]``."""
    k1, k2 = jax.random.split(key)
    u1 = jax.random.uniform(k1, (n,), jnp.float32)
    u2 = jax.random.uniform(k2, (n,), jnp.float32)
    # |λ|² uniform on [r_min², r_max²]; ν = -log|λ| > 0. The clip keeps log() finite when
    # r_max = 1 meets u1 = 1 or r_min = 0 meets u1 = 0.
    r2 = jnp.clip(u1 * (r_max**2 - r_min**2) + r_min**2, 1e-12, 1.0 - 1e-7)
    nu_log = jnp.log(-0.5 * jnp.log(r2))
    theta_log = jnp.log(jnp.maximum(max_phase * u2, 1e-12))
    return nu_log.astype(dtype), theta_log.astype(dtype)


class LRUCell(RecurrentCell):
    """The Linear Recurrent Unit (see the module docstring).

    Args:
      in_features: E.
      hidden_features: H, both the output width and the complex state size N.
      r_min, r_max: the ring of initial eigenvalue moduli, ``0 <= r_min < r_max <= 1``.
        The paper uses ``(0, 1)`` by default and ``(0.9, 0.999)`` for long-range tasks.
      max_phase: initial phases are uniform in ``[0, max_phase]`` (paper: ``2π``, or
        ``π/10`` for long-range tasks).
      activation: ``'gelu'`` (default) or ``'none'`` on the output (see the module docstring).
      scan_mode: ``'associative'`` (parallel over time, the default) or ``'sequential'``
        for :meth:`scan_projected`; both give the same numbers up to float32 rounding.
      impl: ``"auto"`` | ``"fused"`` | ``"scan"`` for the input projection, as
        :class:`rnnjax.nn.MinGRUCell`.
      dtype, param_dtype: as for every cell; the recurrence runs in complex64 (complex128
        for float64 inputs) whatever ``dtype``.
    """

    num_gates = 3
    # The tanh form of GELU, as jax.nn.gelu/flax's default (the paper's code is in JAX); the
    # erf form costs ~40% of a training step on XLA:CPU.
    activations = {"gelu": lambda y: jax.nn.gelu(y, approximate=True), "none": lambda y: y}

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        activation: str = "gelu",
        scan_mode: ScanMode | str = ScanMode.ASSOCIATIVE,
        impl: str = "auto",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"LRUCell: need 0 <= r_min < r_max <= 1 (eigenvalue moduli), got "
                             f"r_min={r_min}, r_max={r_max}")
        if not max_phase > 0.0:
            raise ValueError(f"LRUCell: max_phase must be > 0, got {max_phase}")
        if activation not in self.activations:
            raise ValueError(f"LRUCell: unknown activation {activation!r}; known: "
                             f"{sorted(self.activations)}")
        scan_mode = ScanMode.parse(scan_mode)
        if scan_mode is ScanMode.LOG_SPACE:
            raise ValueError("LRUCell: scan_mode='log_space' needs positive real coefficients; "
                             "the LRU's are complex. Use 'associative' or 'sequential'")
        compute = jnp.dtype(dtype or param_dtype)
        self.impl = check_impl("LRUCell", impl, unfusable=None if compute in fused.FUSED_DTYPES
                               else f"the fused projection runs in float32 or float64, this "
                               f"cell computes in {compute}")
        self.r_min, self.r_max, self.max_phase = float(r_min), float(r_max), float(max_phase)
        self.scan_mode = scan_mode
        self.activation = activation
        E, H = in_features, hidden_features
        nu_log, theta_log = ring_init(rngs.params(), H, r_min, r_max, max_phase, param_dtype)
        self.nu_log = nnx.Param(nu_log)
        self.theta_log = nnx.Param(theta_log)
        lam_abs = jnp.exp(-jnp.exp(nu_log.astype(jnp.float32)))
        self.gamma_log = nnx.Param(
            (0.5 * jnp.log1p(-jnp.square(lam_abs))).astype(param_dtype))
        normal = jax.random.normal
        b = normal(rngs.params(), (E, 2 * H), jnp.float32) / math.sqrt(2 * E)
        if E == H:
            d = jnp.diag(normal(rngs.params(), (H,), jnp.float32))
        else:
            d = normal(rngs.params(), (E, H), jnp.float32) / math.sqrt(E)
        self.w_ih = nnx.Param(jnp.concatenate([b, d], axis=1).astype(param_dtype))
        c = normal(rngs.params(), (2, H, H), jnp.float32) / math.sqrt(H)  # Re C, Im C (H_out, N)
        self.w_out = nnx.Param(jnp.concatenate([c[0].T, -c[1].T], axis=0).astype(param_dtype))

    # -- parameters -------------------------------------------------------------
    def eigenvalues(self) -> Array:
        """``λ`` ``(H,)``, complex64 (complex128 for float64 parameters)."""
        nu_log, theta_log = self.nu_log[...], self.theta_log[...]
        ct = jnp.promote_types(nu_log.dtype, jnp.float32)
        return jnp.exp(-jnp.exp(nu_log.astype(ct)) + 1j * jnp.exp(theta_log.astype(ct)))

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., 3H)``: ``x W_ih`` (no bias), by the fused projection
        (:func:`rnnjax.nn.fused.project`, a fast backward) unless ``impl="scan"``."""
        self.check_features(x)
        w = self._p("w_ih")
        return fused.dense_projection(self._cast(x), w,
                                      jnp.zeros((3 * self.hidden_features,), w.dtype),
                                      impl=self.impl, where="LRUCell")

    def _coefficients(self, xp: Array, cdtype) -> tuple[Array, Array, Array]:
        """``(λ (H,), γ ⊙ B x (..., H) complex, D x (..., H))`` from ``xp`` ``(..., 3H)``."""
        H = self.hidden_features
        ct = jnp.promote_types(xp.dtype, jnp.float32)
        xp = xp.astype(ct)
        gamma = jnp.exp(self.gamma_log[...].astype(ct))
        bx = (gamma * xp[..., :H] + 1j * (gamma * xp[..., H : 2 * H])).astype(cdtype)
        return self.eigenvalues().astype(cdtype), bx, xp[..., 2 * H :]

    def _readout(self, re: Array, im: Array, dx: Array) -> Array:
        """``y = act(Re(C s) + D x)``."""
        w_out = self.w_out[...].astype(re.dtype)
        return self.activations[self.activation](jnp.concatenate([re, im], axis=-1) @ w_out + dx)

    @staticmethod
    def _complex_dtype(*arrays):
        real = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
        return jnp.complex128 if real == jnp.float64 else jnp.complex64

    # -- the two forms ------------------------------------------------------------
    def step_projected(self, carry, xp):
        cdtype = self._complex_dtype(xp, carry.re)
        lam, bx, dx = self._coefficients(xp, cdtype)
        s = lam * (carry.re + 1j * carry.im).astype(cdtype) + bx
        re, im = jnp.real(s), jnp.imag(s)
        y = self._readout(re, im, dx)
        out = carry.h.dtype
        return LRUState(y.astype(out), re.astype(out), im.astype(out)), y.astype(xp.dtype)

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        """The recurrence over ``xp`` ``(T, B, 3H)`` by :func:`linear_scan` (``scan_mode``),
        then the readout as one matmul over all steps. Same contract as
        :meth:`RecurrentCell.scan_projected`."""
        cdtype = self._complex_dtype(xp, carry.re)
        lam, bx, dx = self._coefficients(xp, cdtype)
        s0 = (carry.re + 1j * carry.im).astype(cdtype)
        s_last, ss = linear_scan(jnp.broadcast_to(lam, bx.shape), bx, s0, mask,
                                 reverse=reverse, mode=self.scan_mode, unroll=unroll,
                                 resets=resets)
        ys = self._readout(jnp.real(ss), jnp.imag(ss), dx)
        out = carry.h.dtype
        if mask is None:
            h = ys[0] if reverse else ys[-1]
        else:
            # The carry's h is the output at each row's last valid step processed (t = T-1
            # forward, t = 0 reverse), or the initial h where a row has no valid step.
            m = mask.astype(bool)
            ys = jnp.where(m[..., None], ys, 0.0)
            T = m.shape[0]
            order = jnp.arange(T)[:, None]
            last = jnp.where(m, order if not reverse else T - 1 - order, -1).max(axis=0)
            t_idx = last if not reverse else T - 1 - last
            h = jnp.take_along_axis(ys, jnp.clip(t_idx, 0, T - 1)[None, :, None], axis=0)[0]
            h = jnp.where((last >= 0)[:, None], h.astype(out), carry.h)
        new = LRUState(h.astype(out), jnp.real(s_last).astype(out), jnp.imag(s_last).astype(out))
        return new, ys.astype(xp.dtype)

    def initialize_carry(self, batch_shape, dtype=None):
        z = self._zeros(batch_shape, dtype)
        return LRUState(z, z, z)

    # -- diagnostics hooks --------------------------------------------------------
    @property
    def state_width(self) -> int:
        """2H: gradient through time is measured on the complex state ``[Re s, Im s]``."""
        return 2 * self.hidden_features

    def perturbed_step(self, carry, xp_t, eps):
        """The step with ``eps`` ``(B, 2H)`` added to ``[Re s_t, Im s_t]``; the output
        ``y_t`` is read from the perturbed state, so the perturbation reaches it too."""
        carry, _ = self.step_projected(carry, xp_t)
        H = self.hidden_features
        re, im = carry.re + eps[:, :H], carry.im + eps[:, H:]
        dx = xp_t[..., 2 * H :].astype(re.dtype)
        y = self._readout(re, im, dx).astype(xp_t.dtype)
        return LRUState(y.astype(carry.h.dtype), re, im), y

    def recurrent_matrices(self):
        """``{"lambda": diag(λ)}``: the recurrent matrix, whose spectral radius is max |λ|."""
        return {"lambda": jnp.diag(self.eigenvalues())}


register_cell("lru", LRUCell)

