"""Fused LSTM and GRU time loops with a hand-written backward pass (custom VJP).

What it is for: training speed on XLA:CPU (it is also faster on GPUs, where it
was checked). ``jax.grad`` of a ``lax.scan`` stores every intermediate of every
step and, in its reverse loop, computes ``dW_hh`` one small matmul per step. The
functions here run the same recurrence as ``LSTMCell.step_projected`` /
``GRUCell.step_projected`` under :func:`rnnjax.nn.scan.masked_scan`, but

* the forward loop keeps only what the backward needs: the gate activations,
  one ``(T, B, H)`` array per gate, and the carries;
* the backward loop is a reverse ``lax.scan`` that carries only ``dh`` (and
  ``dc``) and emits the gate gradients ``(T, B, G*H)``, which are ``dxp``;
* ``dW_hh`` is then ONE ``(H, T*B) x (T*B, G*H)`` matmul after the loop.

Layout choices, each measured (PERF_NOTES, and the "Why" comments below): one
sigmoid covers all four LSTM gates (``tanh(x) = 2*sigmoid(2x) - 1``); no
sigmoid/tanh runs in a fusion that slices one array at several offsets (XLA:CPU
does not vectorise those, so the GRU uses three per-gate matmuls); big batches
are cut into independent row blocks (:func:`lanes_for`) so that both cores work.
:func:`project` is the input projection with a fast backward, for
``project_inputs``.

Inputs are time-major projected inputs ``xp`` ``(T, B, G*H)`` as produced by
``cell.project_inputs``; the mask is ``(T, B)`` bool with the semantics of
:func:`masked_scan` (masked steps keep the carry and output zero; ``reverse``
starts each row at its own last valid step). Values match the plain path to
float rounding (tests/test_nn_fused.py).

This module must never import cells, layers or anything above ``rnnjax.nn``,
and must never change what the plain path computes: it is an optimisation
only. ``custom_vjp`` has no forward-mode rule, so code that needs ``jax.jvp`` /
``jax.jacfwd`` through a recurrence traces it inside :func:`disabled`.
"""

from __future__ import annotations

import contextlib
import threading
from functools import partial

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array, LSTMState

# Dtypes the fused loops are used for. Others (bfloat16, float16) fall back to
# the plain scan, whose autodiff keeps the dtype handling of the cell code.
_FUSED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))

_state = threading.local()


def enabled() -> bool:
    """Whether cells dispatch to the fused loops (default True; per thread)."""
    return getattr(_state, "enabled", True)


def set_enabled(flag: bool) -> None:
    """Switches the fused loops on or off for this thread (read at trace time)."""
    _state.enabled = bool(flag)


@contextlib.contextmanager
def disabled():
    """Context in which cells trace the plain :func:`masked_scan` path instead.

    Use it for forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``), which a
    custom VJP does not support, or to measure the plain path. It acts when a
    function is traced, so wrap the first call of a jitted function.
    """
    old = enabled()
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(old)


def can_fuse(xp: Array, w_hh: Array, carry) -> bool:
    """True when the fused loop applies: enabled, and xp, W_hh and carry share a dtype
    in float32/float64."""
    if not enabled():
        return False
    dt = jnp.dtype(xp.dtype)
    if dt not in _FUSED_DTYPES or jnp.dtype(w_hh.dtype) != dt:
        return False
    return all(jnp.dtype(leaf.dtype) == dt for leaf in jax.tree.leaves(carry))


def can_project(x: Array, w: Array) -> bool:
    """True when :func:`project` applies: enabled, and x and W share a float32/float64 dtype."""
    dt = jnp.dtype(x.dtype)
    return enabled() and dt in _FUSED_DTYPES and jnp.dtype(w.dtype) == dt


def _check(xp: Array, w_hh: Array, gates: int, mask: Array | None, where: str) -> None:
    if xp.ndim != 3:
        raise ValueError(f"{where}: xp must be time-major (T, B, G*H), got shape {xp.shape}")
    H = w_hh.shape[0]
    if w_hh.shape != (H, gates * H) or xp.shape[-1] != gates * H:
        raise ValueError(
            f"{where}: expected w_hh (H, {gates}*H) and xp (T, B, {gates}*H), got w_hh "
            f"{w_hh.shape} and xp {xp.shape}"
        )
    if mask is not None and mask.shape != xp.shape[:2]:
        raise ValueError(f"{where}: mask must be (T, B) = {xp.shape[:2]}, got {mask.shape}")


def _bmask(m: Array) -> Array:
    return m[:, None]


#: Row blocks ("lanes") per loop body: None picks per shape (:func:`lanes_for`), an
#: int forces that many (1: off). Read at trace time.
LANES: int | None = None
# Per-step multiply-adds from which lanes pay for their overhead on 2 cores.
_LANE_MIN_MACS = 8_000_000
_LANE_MIN_ROWS = 16


def lanes_for(batch: int, hidden: int, gates: int) -> int:
    """How many independent row blocks a loop body cuts the batch into.

    Why: the ops of one step depend on each other, so a step keeps at most one
    matmul and one fusion in flight. Cut into row blocks, the body holds one
    chain per block, and XLA:CPU's executor runs the chains concurrently, so a
    block's elementwise work overlaps another's matmul. Measured on the 2-core
    machine, quiet, M shape (B=64, H=256), fused loss-gradient wall time: LSTM
    70 -> 57 ms with 2 blocks (4: 72 ms), GRU 49 -> 43 ms with 4 (2: 48 ms; its
    three per-gate matmuls make each chain short). On 2 pinned cores of another
    machine: LSTM 87 -> 77 ms, GRU 87 -> 63 ms. At S and L (a step of fewer than
    8M multiply-adds) blocks cost more than they gain. CPU backend only: on a
    GPU they would only add kernel launches.
    """
    if LANES is not None:
        return LANES if LANES > 1 and batch % LANES == 0 else 1
    if jax.default_backend() != "cpu" or batch * hidden * hidden * gates < _LANE_MIN_MACS:
        return 1
    for lanes in ((4, 2) if gates == 3 else (2,)):
        if batch % lanes == 0 and batch // lanes >= _LANE_MIN_ROWS:
            return lanes
    return 1


def _shift(a: Array, a0: Array, reverse: bool) -> Array:
    """The carry entering each step ``(T, B, H)``, from the carries after each step."""
    if reverse:
        return jnp.concatenate([a[1:], a0[None]], axis=0)
    return jnp.concatenate([a0[None], a[:-1]], axis=0)


def _outer_sum(h_in: Array, d: Array) -> Array:
    """``sum_t h_in_t^T d_t``: ``(T, B, H), (T, B, G*H) -> (H, G*H)`` as one matmul.

    Why the barrier: without it XLA:CPU folds the transpose into the dot and then
    transposes the bigger operand (T*B, G*H) instead, into a slow non-YNN dot.
    Materialising ``h^T`` (H, T*B) keeps the matmul canonical.
    """
    T, B, H = h_in.shape
    h_t = jax.lax.optimization_barrier(h_in.reshape(T * B, H).T)
    return h_t @ d.reshape(T * B, -1)


def _lane_scan(step, carry, xs, *, lanes, reverse, unroll):
    """``lax.scan`` of ``step`` with the batch cut into ``lanes`` independent row blocks.

    ``step(carry, x_t) -> (carry, out_t)`` works on any number of rows; each block
    gets its own chain of ops in the loop body, so XLA may run them concurrently.
    Outputs are joined back to full rows inside the loop, so residuals stay
    ``(T, B, ...)``.
    """
    B = jax.tree.leaves(carry)[0].shape[0]
    P = lanes if lanes > 1 and B % lanes == 0 else 1
    Bp = B // P

    def split(tree):
        return tuple(jax.tree.map(lambda a: a[p * Bp : (p + 1) * Bp], tree) for p in range(P))

    def join(parts):
        return jax.tree.map(lambda *a: a[0] if len(a) == 1 else jnp.concatenate(a, 0), *parts)

    def body(carries, x_t):
        res = [step(c, xr) for c, xr in zip(carries, split(x_t))]
        return tuple(r[0] for r in res), join([r[1] for r in res])

    carries, ys = jax.lax.scan(body, split(carry), xs, reverse=reverse, unroll=unroll)
    return join(carries), ys


# ---------------------------------------------------------------------------
# The input projection
# ---------------------------------------------------------------------------
def _with_ones(x2: Array) -> Array:
    """``(N, E) -> (N, E+1)``: appends a column of ones (the bias's input)."""
    return jnp.concatenate([x2, jnp.ones((x2.shape[0], 1), x2.dtype)], axis=-1)


@jax.custom_vjp
def project(x: Array, w: Array, b: Array) -> Array:
    """``x W + b`` for ``x`` ``(..., E)``, ``W`` ``(E, G*H)``, ``b`` ``(G*H,)``.

    The same numbers as ``x @ w + b`` up to float rounding; what differs is speed
    on XLA:CPU (one core, fwd+bwd, M shape: 20 ms here, 77 ms for autodiff of
    ``x @ w + b``):

    * autodiff computes ``dW = x^T dxp`` by transposing ``dxp`` (T*B, G*H) into a
      slow non-YNN matmul; here it is one canonical ``(E+1, T*B) x (T*B, G*H)``
      matmul on a materialised ``x^T``;
    * the bias rides in that matmul as a row of ``W`` against a column of ones in
      ``x``, so neither the forward ``+ b`` nor ``db = sum(dxp)`` is a separate pass
      over the (T*B, G*H) array.
    """
    return _project_fwd(x, w, b)[0]


def _project_fwd(x, w, b):
    xa = _with_ones(x.reshape(-1, x.shape[-1]))
    y = xa @ jnp.concatenate([w, b[None].astype(w.dtype)], axis=0)
    return y.reshape(*x.shape[:-1], w.shape[-1]), (xa, w)


def _project_bwd(res, g):
    xa, w = res
    E = w.shape[0]
    g2 = g.reshape(-1, g.shape[-1])
    dwb = jax.lax.optimization_barrier(xa.T) @ g2  # (E+1, G*H)
    return g @ w.T, dwb[:E], dwb[E]


project.defvjp(_project_fwd, _project_bwd)


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------
def _lstm_gate_scale(H: int, dtype) -> Array:
    """``(4H,)`` pre-activation scale ``[1, 1, 2, 1]`` per gate block (i, f, g, o).

    Why: ``tanh(x) = 2*sigmoid(2x) - 1`` lets one sigmoid over the whole (B, 4H)
    matrix serve all four gates; the factor 2 is exact in floating point, and the
    result differs from tanh by a few float32 ulps of 1 (absolute).
    """
    return jnp.repeat(jnp.asarray([1, 1, 2, 1], dtype), H)


def _lstm_forward(w, xp, h0, c0, mask, reverse, unroll, keep):
    """The forward loop. Returns ``((h, c), ys, residuals or None)``."""
    H = w.shape[0]
    scale = _lstm_gate_scale(H, xp.dtype)

    def step(carry, inp):
        h, c = carry
        xp_t, m_t = inp
        s = jax.nn.sigmoid((xp_t + h @ w) * scale)  # (B, 4H): i, f, (g+1)/2, o
        i, f, gs, o = s[:, :H], s[:, H : 2 * H], s[:, 2 * H : 3 * H], s[:, 3 * H :]
        c_new = f * c + i * (2 * gs - 1)
        h_new = o * jnp.tanh(c_new)
        if m_t is not None:
            h_new = jnp.where(_bmask(m_t), h_new, h)
            c_new = jnp.where(_bmask(m_t), c_new, c)
        # The gates are kept as four (B, H) arrays: the backward then reads each
        # whole instead of slicing one (B, 4H) array, 1.2-1.4x faster per step.
        return (h_new, c_new), ((h_new, c_new, (i, f, gs, o)) if keep else h_new)

    lanes = lanes_for(xp.shape[1], H, 4)
    (h, c), out = _lane_scan(step, (h0, c0), (xp, mask), lanes=lanes, reverse=reverse,
                             unroll=unroll)
    hs = out[0] if keep else out  # (T, B, H) h carry after each step
    ys = hs if mask is None else jnp.where(mask[..., None], hs, 0)
    return (h, c), ys, (out if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lstm(reverse, unroll, w, xp, h0, c0, mask):
    (h, c), ys, _ = _lstm_forward(w, xp, h0, c0, mask, reverse, unroll, keep=False)
    return (h, c), ys


def _lstm_fwd(reverse, unroll, w, xp, h0, c0, mask):
    (h, c), ys, (hs, cs, gates) = _lstm_forward(w, xp, h0, c0, mask, reverse, unroll, keep=True)
    return ((h, c), ys), (w, gates, hs, cs, h0, c0, mask)


def _lstm_bwd(reverse, unroll, res, cts):
    w, gates, hs, cs, h0, c0, mask = res
    (dh_T, dc_T), dys = cts
    T, B, H = hs.shape
    h_in, c_in = _shift(hs, h0, reverse), _shift(cs, c0, reverse)
    w_t = w.T

    def step(carry, inp):
        dh, dc = carry
        (i, f, gs, o), c_t, cin_t, dy_t, m_t = inp
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
        return (dh_prev, dc_prev), dgates

    (dh0, dc0), dgates = _lane_scan(
        step, (dh_T, dc_T), (gates, cs, c_in, dys, mask), lanes=lanes_for(B, H, 4),
        reverse=not reverse, unroll=unroll,
    )
    return _outer_sum(h_in, dgates), dgates, dh0, dc0, None


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_scan(
    w_hh: Array,
    xp: Array,
    carry,
    mask: Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[LSTMState, Array]:
    """Fused LSTM over time-major projected inputs.

    Args:
      w_hh: ``(H, 4H)`` recurrent kernel, gate order ``i, f, g, o``.
      xp: ``(T, B, 4H)`` projected inputs (``x W_ih + b_ih + b_hh``).
      carry: ``(h, c)``, each ``(B, H)``.
      mask: ``(T, B)`` bool or None.
      reverse, unroll: as in :func:`rnnjax.nn.scan.masked_scan`.

    Returns:
      ``(LSTMState(h, c), ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    _check(xp, w_hh, 4, mask, "lstm_scan")
    h0, c0 = carry
    if mask is not None:
        mask = mask.astype(bool)
    (h, c), ys = _lstm(bool(reverse), int(unroll), w_hh, xp, h0, c0, mask)
    return LSTMState(h, c), ys


# ---------------------------------------------------------------------------
# GRU (cuDNN form: the reset gate multiplies (h W_hn + b_hn))
# ---------------------------------------------------------------------------
def _gru_forward(w, b_hn, xp, h0, mask, reverse, unroll, keep):
    """The forward loop. Returns ``(h, ys, residuals or None)``.

    Why three (B, H) x (H, H) matmuls instead of one (B, H) x (H, 3H): on XLA:CPU
    a fusion that slices a matmul output (or xp_t) at several offsets and applies
    sigmoid/tanh is not vectorised; per-gate operands ran the S forward 2.7x faster.
    """
    H = w.shape[0]
    w_r, w_z, w_n = w[:, :H], w[:, H : 2 * H], w[:, 2 * H :]
    xs = (xp[..., :H], xp[..., H : 2 * H], xp[..., 2 * H :])

    def step(h, inp):
        (xr, xz, xn), m_t = inp
        r = jax.nn.sigmoid(xr + h @ w_r)
        z = jax.nn.sigmoid(xz + h @ w_z)
        hn = h @ w_n + b_hn
        n = jnp.tanh(xn + r * hn)
        h_new = n + z * (h - n)
        if m_t is not None:
            h_new = jnp.where(_bmask(m_t), h_new, h)
        return h_new, ((h_new, r, z, n, hn) if keep else h_new)

    lanes = lanes_for(xp.shape[1], H, 3)
    h, out = _lane_scan(step, h0, (xs, mask), lanes=lanes, reverse=reverse, unroll=unroll)
    hs = out[0] if keep else out
    ys = hs if mask is None else jnp.where(mask[..., None], hs, 0)
    return h, ys, (out if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gru(reverse, unroll, w, b_hn, xp, h0, mask):
    h, ys, _ = _gru_forward(w, b_hn, xp, h0, mask, reverse, unroll, keep=False)
    return h, ys


def _gru_fwd(reverse, unroll, w, b_hn, xp, h0, mask):
    h, ys, out = _gru_forward(w, b_hn, xp, h0, mask, reverse, unroll, keep=True)
    return (h, ys), (w, out, h0, mask)


def _gru_bwd(reverse, unroll, res, cts):
    w, (hs, r, z, n, hn), h0, mask = res
    dh_T, dys = cts
    T, B, H = hs.shape
    h_in = _shift(hs, h0, reverse)
    w_t = w.T

    def step(dh, inp):
        r, z, n, hn, h_prev, dy, m_t = inp
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
        return dh_prev, (dhh, dn)

    dh0, (dhh, dn) = _lane_scan(
        step, dh_T, (r, z, n, hn, h_in, dys, mask), lanes=lanes_for(B, H, 3),
        reverse=not reverse, unroll=unroll,
    )
    db_hn = jnp.sum(dhh[..., 2 * H :], axis=(0, 1))
    dxp = jnp.concatenate([dhh[..., : 2 * H], dn], axis=-1)
    return _outer_sum(h_in, dhh), db_hn, dxp, dh0, None


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
) -> tuple[Array, Array]:
    """Fused GRU (cuDNN form, ``reset_before=False``) over time-major projected inputs.

    Args:
      w_hh: ``(H, 3H)`` recurrent kernel, gate order ``r, z, n``.
      b_hn: ``(H,)`` the hidden bias of the n gate (inside ``r * (h W_hn + b_hn)``).
      xp: ``(T, B, 3H)`` projected inputs (``x W_ih + b_ih + [b_hr, b_hz, 0]``).
      h0: ``(B, H)`` initial carry.
      mask: ``(T, B)`` bool or None.
      reverse, unroll: as in :func:`rnnjax.nn.scan.masked_scan`.

    Returns:
      ``(h, ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    _check(xp, w_hh, 3, mask, "gru_scan")
    if b_hn.shape != (w_hh.shape[0],):
        raise ValueError(f"gru_scan: b_hn must be (H,) = ({w_hh.shape[0]},), got {b_hn.shape}")
    if mask is not None:
        mask = mask.astype(bool)
    return _gru(bool(reverse), int(unroll), w_hh, b_hn, xp, h0, mask)
