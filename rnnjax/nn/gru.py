"""GRU (Cho et al. 2014), PyTorch/cuDNN layout, gates ``r, z, n``, and its fused loop.

``reset_before=False`` (default, PyTorch/cuDNN)::

    r = σ(x W_ir + b_ir + h W_hr + b_hr);  z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn));  h' = (1 - z) n + z h

``reset_before=True`` (Cho et al. 2014): ``n = tanh(x W_in + b_in + (r*h) W_hn + b_hn)``.

The gate maths is written once, in :func:`gru_gates`, and used by the step
(:meth:`GRUCell.step_projected`), by the fused forward loop (cuDNN form only) and by
:meth:`GRUCell.gate_activations`. The fused loop (:func:`gru_scan`) is a custom VJP
(``docs/performance.md`` §4); the generic pieces are in :mod:`rnnjax.nn.fused`.

Cells never import layers, data or training code.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from rnnjax.nn import pallas_rnn
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
from rnnjax.nn.types import Array


def gru_gates(h: Array, xr: Array, xz: Array, xn: Array, w_r: Array, w_z: Array, w_n: Array,
              b_hn: Array | None) -> tuple[Array, Array, Array, Array]:
    """The GRU's gates for carry ``h`` ``(B, H)`` and projected inputs ``xr, xz, xn``.

    ``w_r, w_z, w_n`` are the ``(H, H)`` blocks of ``w_hh``. ``b_hn`` ``(H,)`` gives the
    cuDNN form ``n = tanh(xn + r * (h W_n + b_hn))``; None gives Cho et al.'s
    ``n = tanh(xn + (r*h) W_n)`` (its ``b_hn`` is folded into ``xn``). Returns
    ``(r, z, n, hn)`` with ``hn`` the hidden term inside ``n`` (a residual of the
    fused backward). The new carry is ``n + z * (h - n)``.

    Why three (B, H) x (H, H) matmuls instead of one (B, H) x (H, 3H): on XLA:CPU a
    fusion that slices a matmul output (or xp_t) at several offsets and applies
    sigmoid/tanh is not vectorised; per-gate operands ran the S forward 2.7x faster.
    """
    r = jax.nn.sigmoid(xr + h @ w_r)
    z = jax.nn.sigmoid(xz + h @ w_z)
    if b_hn is None:
        hn = (r * h) @ w_n
        n = jnp.tanh(xn + hn)
    else:
        hn = h @ w_n + b_hn
        n = jnp.tanh(xn + r * hn)
    return r, z, n, hn


def _blocks(a: Array, H: int) -> tuple[Array, Array, Array]:
    return a[..., :H], a[..., H : 2 * H], a[..., 2 * H :]


class GRUCell(Regularised, GatedCell):
    """GRU, PyTorch/cuDNN layout (see the module docstring). Carry and output: ``h`` ``(B, H)``
    (the carry in :attr:`carry_dtype`, the output in the compute dtype).

    Args:
      reset_before: False (default) for the cuDNN form, True for Cho et al. 2014.
      impl: ``"auto"`` (default: the fused loop for float32/float64 and
        ``reset_before=False``), ``"fused"``, ``"scan"`` (plain :func:`masked_scan`
        and a plain projection matmul; forward-mode autodiff works) or ``"pallas"`` (the
        fused loop's maths as a GPU kernel, :mod:`rnnjax.nn.pallas_rnn`; as
        :class:`rnnjax.nn.LSTMCell`'s).
      lanes: row blocks of the fused loop body (``docs/performance.md`` §8); None
        picks per shape (:func:`rnnjax.nn.fused.lanes_for`), 1 turns them off.
      weight_drop, zoneout: as :class:`rnnjax.nn.LSTMCell` (zoneout on ``h``).
      Others as :class:`rnnjax.nn.gated.GatedCell`.
    """

    num_gates = 3
    gate_names = ("r", "z", "n")
    has_pallas = True

    def __init__(self, in_features: int, hidden_features: int, *, reset_before: bool = False,
                 lanes: int | None = None, weight_drop: float = 0.0, zoneout: float = 0.0,
                 **kwargs):
        self.reset_before = reset_before
        if lanes is not None and lanes < 1:
            raise ValueError(f"GRUCell: lanes must be None or >= 1, got {lanes}")
        self.lanes = lanes
        self.zoneout = zoneout  # read by _unfusable during GatedCell.__init__
        super().__init__(in_features, hidden_features, **kwargs)
        self._init_regularizers(weight_drop, zoneout, kwargs.get("rngs"))

    def _unfusable(self):
        if self.zoneout:
            return "zoneout runs the plain scan (the fused loop has no zoneout)"
        if self.reset_before:
            return "the fused loop is the cuDNN form only, and this cell has reset_before=True"
        return super()._unfusable()

    def _projection_bias(self):
        # b_hn multiplies into r*(...) in the cuDNN form, so only b_hr, b_hz fold.
        H = self.hidden_features
        b_hh = self._p("b_hh")
        if self.reset_before:
            return self._p("b_ih") + b_hh
        return self._p("b_ih") + jnp.concatenate([b_hh[: 2 * H], jnp.zeros_like(b_hh[2 * H :])])

    def _gates(self, h, xp, w_hh=None):
        H = self.hidden_features
        b_hn = None if self.reset_before else self._p("b_hh")[2 * H :]
        w_hh = self._p("w_hh") if w_hh is None else w_hh
        return gru_gates(self._cast(h), *_blocks(xp, H), *_blocks(w_hh, H), b_hn)

    def _step(self, carry, xp, w_hh):
        h = carry
        _, z, n, _ = self._gates(h, xp, w_hh)
        h = n + z * (h - n)  # == (1 - z) n + z h, in the carry's dtype
        return h, self._cast(h)

    def step_projected(self, carry, xp):
        return self._step_with_regularizers(carry, xp)

    def gate_activations(self, carry, xp_t):
        r, z, n, _ = self._gates(carry, xp_t)
        return {"r": ("sigmoid", r), "z": ("sigmoid", z), "n": ("tanh", n)}

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1, resets=None):
        # Why: as LSTMCell.scan_projected; only the cuDNN form (reset_before=False) is fused.
        w_hh = self._w_hh()  # one weight-drop mask for the whole call
        step = partial(self._step, w_hh=w_hh)
        if self.zone is not None:
            return self._zoneout_scan(step, carry, xp, mask, reverse=reverse, unroll=unroll,
                                      resets=resets)
        if self.impl == "pallas":
            return pallas_rnn.gru_scan(w_hh, self._p("b_hh")[2 * self.hidden_features :], xp,
                                       carry, mask, gates=gru_gates, reverse=reverse,
                                       resets=resets)
        if self._fuse(xp, w_hh, carry):
            H = self.hidden_features
            return gru_scan(w_hh, self._p("b_hh")[2 * H :], xp, carry, mask,
                            reverse=reverse, unroll=unroll, lanes=self.lanes, resets=resets)
        return masked_scan(step, carry, xp, mask, reverse=reverse, unroll=unroll, resets=resets)

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


register_cell("gru", GRUCell)


# ---------------------------------------------------------------------------
# The fused loop (cuDNN form: the reset gate multiplies (h W_hn + b_hn))
# ---------------------------------------------------------------------------
def _gru_forward(w, b_hn, xp, h0, mask, resets, reverse, unroll, lanes, keep):
    """The forward loop. Returns ``(h, ys, residuals or None)``."""
    H = w.shape[0]
    w_r, w_z, w_n = _blocks(w, H)
    xs = _blocks(xp, H)

    def step(carry, inp):
        # With resets the initial carry rides along (as in the LSTM's loop).
        h, *init = carry
        (xr, xz, xn), m_t, r_t = inp
        h_in = h if r_t is None else jnp.where(_bmask(r_t), init[0], h)
        r, z, n, hn = gru_gates(h_in, xr, xz, xn, w_r, w_z, w_n, b_hn)
        h_new = n + z * (h_in - n)
        if m_t is not None:
            h_new = jnp.where(_bmask(m_t), h_new, h)
        return (h_new, *init), ((h_new, r, z, n, hn) if keep else h_new)

    init = () if resets is None else (h0,)
    (h, *_), out = _lane_scan(step, (h0, *init), (xs, mask, resets), lanes=lanes,
                              reverse=reverse, unroll=unroll)
    hs = out[0] if keep else out
    ys = hs if mask is None else jnp.where(mask[..., None], hs, 0)
    return h, ys, (out if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _gru(reverse, unroll, lanes, w, b_hn, xp, h0, mask, resets):
    h, ys, _ = _gru_forward(w, b_hn, xp, h0, mask, resets, reverse, unroll, lanes, keep=False)
    return h, ys


def _gru_fwd(reverse, unroll, lanes, w, b_hn, xp, h0, mask, resets):
    h, ys, out = _gru_forward(w, b_hn, xp, h0, mask, resets, reverse, unroll, lanes, keep=True)
    return (h, ys), (w, out, h0, mask, resets)


def _gru_bwd(reverse, unroll, lanes, res, cts):
    w, (hs, r, z, n, hn), h0, mask, resets = res
    dh_T, dys = cts
    H = hs.shape[-1]
    h_in = _shift(hs, h0, reverse, resets)
    w_t = w.T

    def step(carry, inp):
        dh, *acc = carry
        r, z, n, hn, h_prev, dy, m_t, r_t = inp
        dh_t = dh + dy
        if m_t is not None:
            dh_t = jnp.where(_bmask(m_t), dh_t, 0)
        dn = dh_t * (1 - z) * (1 - n * n)  # d n-pre-activation
        dr = dn * hn * r * (1 - r)
        dz = dh_t * (h_prev - n) * z * (1 - z)
        dhh = jnp.concatenate([dr, dz, dn * r], axis=-1)  # d (h W_hh), (B, 3H)
        dh_prev = dh_t * z + dhh @ w_t
        if m_t is not None:
            dh_prev = jnp.where(_bmask(m_t), dh_prev, dh)
        if r_t is not None:
            # A restarted step read the initial carry, not the previous step's.
            acc = [acc[0] + jnp.where(_bmask(r_t), dh_prev, 0)]
            dh_prev = jnp.where(_bmask(r_t), 0, dh_prev)
        return (dh_prev, *acc), (dhh, dn)

    acc = () if resets is None else (jnp.zeros_like(dh_T),)
    (dh0, *acc), (dhh, dn) = _lane_scan(
        step, (dh_T, *acc), (r, z, n, hn, h_in, dys, mask, resets), lanes=lanes,
        reverse=not reverse, unroll=unroll,
    )
    if acc:
        dh0 = dh0 + acc[0]
    db_hn = jnp.sum(dhh[..., 2 * H :], axis=(0, 1))
    dxp = jnp.concatenate([dhh[..., : 2 * H], dn], axis=-1)
    return _outer_sum(h_in, dhh), db_hn, dxp, dh0, None, None


_gru.defvjp(_gru_fwd, _gru_bwd)


def gru_scan(
    w_hh: Array,
    b_hn: Array,
    xp: Array,
    h0: Array,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    lanes: int | None = None,
    resets: Array | None = None,
) -> tuple[Array, Array]:
    """Fused GRU (cuDNN form, ``reset_before=False``) over time-major projected inputs.

    Args:
      w_hh: ``(H, 3H)`` recurrent kernel, gate order ``r, z, n``.
      b_hn: ``(H,)`` the hidden bias of the n gate (inside ``r * (h W_hn + b_hn)``).
      xp: ``(T, B, 3H)`` projected inputs (``x W_ih + b_ih + [b_hr, b_hz, 0]``).
      h0: ``(B, H)`` initial carry.
      mask: ``(T, B)`` bool or None.
      reverse, unroll: as in :func:`rnnjax.nn.scan.masked_scan`.
      lanes: row blocks per loop body, as :func:`rnnjax.nn.fused.lanes_for`.
      resets: ``(T, B)`` bool or None: restart from ``h0`` before the step
        (:mod:`rnnjax.nn.scan`'s reset convention).

    Returns:
      ``(h, ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    _check(xp, w_hh, 3, mask, "gru_scan", resets)
    if b_hn.shape != (w_hh.shape[0],):
        raise ValueError(f"gru_scan: b_hn must be (H,) = ({w_hh.shape[0]},), got {b_hn.shape}")
    if mask is not None:
        mask = mask.astype(bool)
    resets = _valid_resets(resets, mask)
    n = lanes_for(xp.shape[1], w_hh.shape[0], 3, lanes)
    return _gru(bool(reverse), int(unroll), n, w_hh, b_hn, xp, h0, mask, resets)
