"""LSTM (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch layout, and its fused loop.

``i, f, g, o = split(x W_ih + b_ih + h W_hh + b_hh)``;
``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(c')``. Gate order ``i, f, g, o``.

The gate maths is written once, in :func:`lstm_gates`, and used by the step
(:meth:`LSTMCell.step_projected`), by the fused forward loop and by
:meth:`LSTMCell.gate_activations`. The fused loop (:func:`lstm_scan`) is a custom
VJP whose backward carries only ``dh, dc`` and computes ``dW_hh`` as one matmul
after the loop (``docs/performance.md`` §4); the generic pieces are in
:mod:`rnnjax.nn.fused`.

On a CUDA GPU the whole sequence can instead run in NVIDIA cuDNN's LSTM kernel
(``impl="cudnn"``, or ``"auto"`` where it can run): :meth:`LSTMCell.scan_inputs` hands
the raw inputs and the cell's own weights to :mod:`rnnjax.nn.cudnn_rnn`, which packs
them into cuDNN's layout; cuDNN computes the same equations (its own gate maths, not
:func:`lstm_gates`: the kernel is a library's, and tests hold it to the step).

Cells never import layers, data or training code.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.nn import cudnn_rnn, pallas_rnn
from rnnjax.nn.cell import register_cell
from rnnjax.nn.fused import (
    _bmask,
    _check,
    _lane_scan,
    _outer_sum,
    _shift,
    _valid_resets,
    lanes_for,
)
from rnnjax.nn.gated import GatedCell
from rnnjax.nn.regularizers import Regularised
from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array, LSTMState


def lstm_gate_scale(H: int, dtype) -> Array:
    """``(4H,)`` pre-activation scale ``[1, 1, 2, 1]`` per gate block (i, f, g, o).

    Why: ``tanh(x) = 2*sigmoid(2x) - 1`` lets one sigmoid over the whole (B, 4H)
    matrix serve all four gates (XLA:CPU fuses elementwise ops over column slices
    poorly, ``docs/performance.md`` §1); the factor 2 is exact in floating point,
    and the result differs from tanh by a few float32 ulps of 1 (absolute).
    """
    return jnp.repeat(jnp.asarray([1, 1, 2, 1], dtype), H)


def lstm_gates(pre: Array, scale: Array) -> tuple[Array, Array, Array, Array]:
    """Pre-activations ``(B, 4H)`` -> ``(i, f, gs, o)``, each ``(B, H)``.

    ``i, f, o`` are the sigmoid gates; ``gs = σ(2 g_pre)``, so the cell input is
    ``g = 2 gs - 1 = tanh(g_pre)``. ``scale`` is :func:`lstm_gate_scale` (passed in
    so that a loop computes it once, outside its body).
    """
    s = jax.nn.sigmoid(pre * scale)  # (B, 4H): i, f, (g+1)/2, o
    # A split, not four slices: the same forward HLO (four slices), and Pallas's Triton
    # lowering (the impl="pallas" kernel calls this function) has a split rule but no
    # slice rule. impl="scan" gradients at B=32, T=64, H=128 on a loaded machine: 44 ms,
    # against 41-55 ms with the slices, within the noise.
    i, f, gs, o = jnp.split(s, 4, axis=-1)
    return i, f, gs, o


class LSTMCell(Regularised, GatedCell):
    """LSTM, PyTorch layout (see the module docstring).

    Carry: :class:`LSTMState` ``(h, c)``, each ``(B, H)`` in :attr:`carry_dtype`; output
    ``h`` ``(B, H)`` in the compute dtype (bfloat16 under a bfloat16 policy).

    Args:
      forget_bias: added to the forget slice of ``b_hh`` at initialisation only
        (default 1.0, Jozefowicz et al. 2015).
      impl: ``"auto"`` (default: cuDNN's kernel where it can run on a CUDA GPU, else the
        fused loop for float32/float64), ``"fused"``, ``"scan"`` (plain
        :func:`masked_scan` and a plain projection matmul; forward-mode autodiff works),
        ``"pallas"`` (the loop as a GPU kernel keeping ``w_hh`` on chip,
        :mod:`rnnjax.nn.pallas_rnn`: H <= 64 in float32; off a GPU it runs interpreted,
        for testing; ``"auto"`` never picks it) or ``"cudnn"`` (NVIDIA cuDNN's LSTM,
        :mod:`rnnjax.nn.cudnn_rnn`; a ValueError, saying why, where it cannot run: no
        CUDA GPU, not float32, zoneout, packed-segment resets, a mask that is not a
        prefix mask). All give the same numbers to float rounding. The cuDNN path runs
        where a layer calls :meth:`scan_inputs`; the step form and :meth:`scan_projected`
        (diagnostics probes) take the fused loop.
      lanes: row blocks of the fused loop body (``docs/performance.md`` §8); None
        picks per shape (:func:`rnnjax.nn.fused.lanes_for`), 1 turns them off.
      weight_drop: DropConnect rate on ``w_hh``, one mask per call (Merity et al. 2017;
        :mod:`rnnjax.nn.regularizers`); the fused loop runs on the dropped kernel.
      zoneout: zoneout rate on ``h`` and ``c`` (Krueger et al. 2016); runs the plain scan.
      Others as :class:`rnnjax.nn.gated.GatedCell`.
    """

    num_gates = 4
    gate_names = ("i", "f", "g", "o")
    has_pallas = True

    def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0,
                 lanes: int | None = None, weight_drop: float = 0.0, zoneout: float = 0.0,
                 **kwargs):
        self.zoneout = zoneout  # read by _unfusable during GatedCell.__init__
        super().__init__(in_features, hidden_features, **kwargs)
        self._init_regularizers(weight_drop, zoneout, kwargs.get("rngs"))
        if lanes is not None and lanes < 1:
            raise ValueError(f"LSTMCell: lanes must be None or >= 1, got {lanes}")
        self.forget_bias = forget_bias
        self.lanes = lanes
        h = hidden_features
        self.b_hh[...] = self.b_hh[...].at[h : 2 * h].add(forget_bias)

    def _no_cudnn(self):
        # cuDNN computes exactly the plain LSTM: a subclass changes the maths (peepholes,
        # a projection, layer norm), so it gets "cudnn" only by saying so itself.
        if type(self) is not LSTMCell:
            return super()._no_cudnn()
        return self._cudnn_static_problem()

    def _cudnn_error(self, why: str) -> str:
        return (f"{type(self).__name__}: impl='cudnn' cannot apply: {why}; use impl='auto' "
                f"(cuDNN or fused where they apply) or impl='scan'")

    def _cudnn_static_problem(self) -> str | None:
        """Why cuDNN cannot run this cell, whatever the inputs (None: it can)."""
        if self.zoneout:
            return "zoneout perturbs every step, and cuDNN runs the whole sequence in one call"
        compute = jnp.dtype(self.dtype or self.param_dtype)
        if compute != cudnn_rnn.CUDNN_DTYPE:
            return (f"JAX's cuDNN LSTM (jax.experimental.rnn) runs float32 only, this cell "
                    f"computes in {compute}")
        return cudnn_rnn.cuda_problem()

    def _cudnn_call_problem(self, carry, x, mask, resets, seq_lengths):
        """``(lengths or None, None)`` where cuDNN can run this call, else ``(None, why)``."""
        if resets is not None:
            return None, ("packed-segment resets restart the carry mid-sequence, which "
                          "cuDNN's kernel cannot")
        dts = {str(jnp.dtype(a.dtype)) for a in (x, *jax.tree.leaves(carry))}
        if dts != {str(cudnn_rnn.CUDNN_DTYPE)}:
            return None, f"inputs and carry must be float32 for cuDNN, got {sorted(dts)}"
        if seq_lengths is not None or mask is None:
            return seq_lengths, None
        if isinstance(mask, jax.core.Tracer):
            return None, ("a mask given under jit cannot be checked to be a prefix mask "
                          "(cuDNN takes one length per row): pass seq_lengths instead")
        m = np.asarray(mask, bool)  # (T, B)
        lengths = m.sum(0)
        gaps = np.nonzero((np.arange(m.shape[0])[:, None] < lengths[None, :]) != m)[1]
        if gaps.size:
            return None, (f"the mask is not a prefix mask (rows {sorted(set(gaps.tolist()))[:5]}"
                          f" have a False before a True), and cuDNN takes one length per row")
        return jnp.asarray(lengths, jnp.int32), None

    def scan_inputs(self, carry, x, mask=None, *, reverse=False, unroll=1, resets=None,
                    seq_lengths=None):
        """The sequence form from ``x`` ``(T, B, E)`` (:meth:`RecurrentCell.scan_inputs`):
        cuDNN's kernel where ``impl`` asks for it and it can run, else the projection and
        :meth:`scan_projected`."""
        why = None
        if self.impl in ("auto", "cudnn"):
            why = self._cudnn_static_problem()
            if why is None:
                self.check_features(x)
                x = self._cast(x)
                if jnp.promote_types(x.dtype, cudnn_rnn.CUDNN_DTYPE) == cudnn_rnn.CUDNN_DTYPE:
                    x = x.astype(cudnn_rnn.CUDNN_DTYPE)  # what x @ w_ih promotes to anyway
                lengths, why = self._cudnn_call_problem(carry, x, mask, resets, seq_lengths)
            if why is None:
                (h, c), ys = cudnn_rnn.lstm_sequence(
                    x, tuple(carry), self._p("w_ih"), self._w_hh(), self._p("b_ih"),
                    self._p("b_hh"), lengths, reverse=reverse)
                return LSTMState(h, c), ys
            if self.impl == "cudnn":
                raise ValueError(self._cudnn_error(why))
        return super().scan_inputs(carry, x, mask, reverse=reverse, unroll=unroll,
                                   resets=resets, seq_lengths=seq_lengths)

    def _unfusable(self):
        if self.zoneout:
            return "zoneout runs the plain scan (the fused loop has no zoneout)"
        return super()._unfusable()

    def _gates(self, carry, xp, w_hh=None):
        h = self._cast(carry[0])  # the float32 carry enters the matmul in the compute dtype
        w_hh = self._p("w_hh") if w_hh is None else w_hh
        return lstm_gates(xp + h @ w_hh, lstm_gate_scale(self.hidden_features, xp.dtype))

    def _step(self, carry, xp, w_hh):
        i, f, gs, o = self._gates(carry, xp, w_hh)
        c = f * carry[1] + i * (2 * gs - 1)  # in the carry's dtype (float32 under bf16)
        h = o * jnp.tanh(c)
        return LSTMState(h, c), self._cast(h)

    def step_projected(self, carry, xp):
        return self._step_with_regularizers(carry, xp)

    def gate_activations(self, carry, xp_t):
        i, f, gs, o = self._gates(carry, xp_t)
        return {"i": ("sigmoid", i), "f": ("sigmoid", f), "g": ("tanh", 2 * gs - 1),
                "o": ("sigmoid", o)}

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        # Why: the fused loop has a hand-written VJP that trains faster on XLA:CPU.
        w_hh = self._w_hh()  # one weight-drop mask for the whole call
        step = partial(self._step, w_hh=w_hh)
        if self.zone is not None:
            return self._zoneout_scan(step, carry, xp, mask, reverse=reverse, unroll=unroll,
                                      resets=resets)
        if self.impl == "pallas":
            return pallas_rnn.lstm_scan(w_hh, xp, carry, mask, gates=lstm_gates,
                                        gate_scale=lstm_gate_scale, reverse=reverse,
                                        resets=resets)
        if self._fuse(xp, w_hh, carry):
            return lstm_scan(w_hh, xp, carry, mask, reverse=reverse, unroll=unroll,
                             lanes=self.lanes, resets=resets)
        return masked_scan(step, carry, xp, mask, reverse=reverse, unroll=unroll, resets=resets)

    def initialize_carry(self, batch_shape, dtype=None):
        z = self._zeros(batch_shape, dtype)
        return LSTMState(z, z)


register_cell("lstm", LSTMCell)


# ---------------------------------------------------------------------------
# The fused loop
# ---------------------------------------------------------------------------
def _lstm_forward(w, xp, h0, c0, mask, resets, reverse, unroll, lanes, keep):
    """The forward loop. Returns ``((h, c), ys, residuals or None)``."""
    H = w.shape[0]
    scale = lstm_gate_scale(H, xp.dtype)

    def step(carry, inp):
        # With resets the initial carry rides along in the loop carry, so that the
        # row blocks of _lane_scan each see their own rows of it.
        h, c, *init = carry
        xp_t, m_t, r_t = inp
        h_in, c_in = h, c
        if r_t is not None:
            h_in = jnp.where(_bmask(r_t), init[0], h)
            c_in = jnp.where(_bmask(r_t), init[1], c)
        i, f, gs, o = lstm_gates(xp_t + h_in @ w, scale)
        c_new = f * c_in + i * (2 * gs - 1)
        h_new = o * jnp.tanh(c_new)
        if m_t is not None:
            h_new = jnp.where(_bmask(m_t), h_new, h)
            c_new = jnp.where(_bmask(m_t), c_new, c)
        # The gates are kept as four (B, H) arrays: the backward then reads each
        # whole instead of slicing one (B, 4H) array, 1.2-1.4x faster per step.
        return (h_new, c_new, *init), ((h_new, c_new, (i, f, gs, o)) if keep else h_new)

    init = () if resets is None else (h0, c0)
    (h, c, *_), out = _lane_scan(step, (h0, c0, *init), (xp, mask, resets), lanes=lanes,
                                 reverse=reverse, unroll=unroll)
    hs = out[0] if keep else out  # (T, B, H) h carry after each step
    ys = hs if mask is None else jnp.where(mask[..., None], hs, 0)
    return (h, c), ys, (out if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _lstm(reverse, unroll, lanes, w, xp, h0, c0, mask, resets):
    (h, c), ys, _ = _lstm_forward(w, xp, h0, c0, mask, resets, reverse, unroll, lanes,
                                  keep=False)
    return (h, c), ys


def _lstm_fwd(reverse, unroll, lanes, w, xp, h0, c0, mask, resets):
    (h, c), ys, (hs, cs, gates) = _lstm_forward(w, xp, h0, c0, mask, resets, reverse, unroll,
                                                lanes, keep=True)
    return ((h, c), ys), (w, gates, hs, cs, h0, c0, mask, resets)


def _lstm_bwd(reverse, unroll, lanes, res, cts):
    w, gates, hs, cs, h0, c0, mask, resets = res
    (dh_T, dc_T), dys = cts
    h_in, c_in = _shift(hs, h0, reverse, resets), _shift(cs, c0, reverse, resets)
    w_t = w.T

    def step(carry, inp):
        dh, dc, *acc = carry
        (i, f, gs, o), c_t, cin_t, dy_t, m_t, r_t = inp
        g = 2 * gs - 1
        # The carried c equals the step's new c wherever the step is valid, and
        # masked steps get no gate gradient, so tanh(c_t) serves and no tanh has
        # to be recomputed from sliced gates.
        tc = jnp.tanh(c_t)
        dh_t = dh + dy_t
        dc_t = dc
        if m_t is not None:
            dh_t = jnp.where(_bmask(m_t), dh_t, 0)
            dc_t = jnp.where(_bmask(m_t), dc_t, 0)
        dct = dc_t + dh_t * o * (1 - tc * tc)
        # d pre-activation per gate; the g gate is 2*sigmoid(2x) - 1, whose
        # derivative 4 gs (1 - gs) equals 1 - tanh(x)^2. (A concatenate beat a
        # select-per-gate broadcast in this loop: 6.1 vs 9.3 ms at S.)
        dgates = jnp.concatenate([
            dct * g * i * (1 - i),
            dct * cin_t * f * (1 - f),
            dct * i * 4 * gs * (1 - gs),
            dh_t * tc * o * (1 - o),
        ], axis=-1)
        dh_prev = dgates @ w_t
        dc_prev = dct * f
        if m_t is not None:
            dh_prev = jnp.where(_bmask(m_t), dh_prev, dh)
            dc_prev = jnp.where(_bmask(m_t), dc_prev, dc)
        if r_t is not None:
            # A restarted step read the initial carry, not the previous step's.
            r = _bmask(r_t)
            acc = [acc[0] + jnp.where(r, dh_prev, 0), acc[1] + jnp.where(r, dc_prev, 0)]
            dh_prev, dc_prev = jnp.where(r, 0, dh_prev), jnp.where(r, 0, dc_prev)
        return (dh_prev, dc_prev, *acc), dgates

    acc = () if resets is None else (jnp.zeros_like(dh_T), jnp.zeros_like(dc_T))
    (dh0, dc0, *acc), dgates = _lane_scan(
        step, (dh_T, dc_T, *acc), (gates, cs, c_in, dys, mask, resets), lanes=lanes,
        reverse=not reverse, unroll=unroll,
    )
    if acc:
        dh0, dc0 = dh0 + acc[0], dc0 + acc[1]
    return _outer_sum(h_in, dgates), dgates, dh0, dc0, None, None


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_scan(
    w_hh: Array,
    xp: Array,
    carry,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    lanes: int | None = None,
    resets: Array | None = None,
) -> tuple[LSTMState, Array]:
    """Fused LSTM over time-major projected inputs.

    Args:
      w_hh: ``(H, 4H)`` recurrent kernel, gate order ``i, f, g, o``.
      xp: ``(T, B, 4H)`` projected inputs (``x W_ih + b_ih + b_hh``).
      carry: ``(h, c)``, each ``(B, H)``.
      mask: ``(T, B)`` bool or None.
      reverse, unroll: as in :func:`rnnjax.nn.scan.masked_scan`.
      lanes: row blocks per loop body, as :func:`rnnjax.nn.fused.lanes_for`.
      resets: ``(T, B)`` bool or None: restart from ``carry`` before the step
        (:mod:`rnnjax.nn.scan`'s reset convention).

    Returns:
      ``(LSTMState(h, c), ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    _check(xp, w_hh, 4, mask, "lstm_scan", resets)
    h0, c0 = carry
    if mask is not None:
        mask = mask.astype(bool)
    resets = _valid_resets(resets, mask)
    n = lanes_for(xp.shape[1], w_hh.shape[0], 4, lanes)
    (h, c), ys = _lstm(bool(reverse), int(unroll), n, w_hh, xp, h0, c0, mask, resets)
    return LSTMState(h, c), ys

