"""Fused LSTM/GRU time loops as Pallas kernels that keep ``W_hh`` on chip (GPU, Triton).

What it is for: training speed on GPUs, persistent-RNN / FlashRNN style. The time loop
runs *inside* one kernel launch per batch block: the kernel reads the recurrent weight
``W_hh`` from memory once, keeps it on chip for all ``T`` steps, and carries ``h`` (and
``c``) in registers, so a step costs no launch and no re-read of the weight. The input
projection ``xp = x W_ih + b`` stays outside (one big matmul, as in every other path).
Cells reach these loops through ``impl="pallas"`` (:class:`rnnjax.nn.LSTMCell`,
:class:`rnnjax.nn.GRUCell`); ``impl="auto"`` never picks them.

Forward and backward are separate kernels joined by a ``custom_vjp``, with
:mod:`rnnjax.nn.fused`'s split of work:

* the forward kernel keeps what the backward needs: per step the carry entering it
  (``h_in``, and ``c_in`` for the LSTM) and the gate activations ``(T, B, 4H)``;
* the backward kernel runs the reverse time loop carrying only the state gradients
  (``dh``, ``dc``) with ``W_hh^T`` on chip, and emits the gate gradients, which are
  ``dxp`` ``(T, B, G*H)``;
* ``dW_hh`` is then ONE ``(H, T*B) x (T*B, G*H)`` matmul after the loop
  (:func:`rnnjax.nn.fused._outer_sum`), outside the kernel.

Masks, reverse and resets follow :func:`rnnjax.nn.scan.masked_scan`: a masked step keeps
the carry and emits zeros; ``reverse=True`` runs ``t = T-1 .. 0`` (the kernel indexes time
backwards; Triton has no reverse loop); a reset step starts from the initial carry. Mask
and resets travel as one ``(T, B)`` int32 array of flags (bit 0 valid, bit 1 reset).

The gate maths is the cells': the caller passes its gate function (``lstm_gates`` and
``lstm_gate_scale``, or ``gru_gates``), which the forward kernel body calls on per-step
tiles. The backward formulas are those of the fused loops' backward in ``lstm.py`` and
``gru.py``, restated per gate here because the Triton lowering has no concatenate (the
fused loops concatenate the gate gradients into one ``(B, G*H)`` matmul operand).

GPU lowering (Triton): every array a kernel loads or stores must have a power-of-two
size, and ``tl.dot`` needs each of M, N, K >= 16. So ``H`` is padded per gate to
``Hp = max(16, next_power_of_2(H))`` (zero rows and columns of ``W_hh``: a padded unit
reads nothing and feeds nothing) and the batch to a multiple of the block ``block_b``
(16 by default; padded rows are masked steps). A ``(block_b, Hp)`` tile is one
``(16, Hp) x (Hp, Hp)`` matmul per gate; one program per batch block holds its own copy of
``W_hh``, so ``W_hh`` must fit on chip: :data:`ONCHIP_BYTES`. The dots follow jax's matmul
precision, like XLA's (the default is TF32 on Triton; ``jax.default_matmul_precision(
"highest")`` gives IEEE float32).

Interpret mode: where the default backend is not a GPU the kernels run with
``interpret=True`` (Pallas evaluates the kernel body as ordinary XLA ops). That is for
testing on a CPU (it compiles slowly: seconds a program); pass ``interpret=`` to force
either way.

What was verified (docs/performance.md §16): on CPU in interpret mode, values and
gradients against the plain scan (tests/test_pallas.py), and that both kernels lower to
Triton IR for CUDA (``lowering_platforms=("cuda",)``, no GPU needed). Not verified here:
compiling that IR to PTX, running it on a GPU, and its speed.

This module must never import cells, layers or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rnnjax.nn.fused import FUSED_DTYPES, _check, _outer_sum
from rnnjax.nn.types import Array, LSTMState

#: Bytes of padded ``W_hh`` (``Hp x G*Hp``) one program keeps on chip. A conservative
#: bound, not measured: an H100/H200 SM has 228 KiB of shared memory and 256 KiB of
#: registers, which the weight shares with the step's ``(block_b, G*Hp)`` gate tile and
#: Triton's dot-operand copies. 64 KiB allows H <= 64 in float32 (LSTM and GRU), H <= 32
#: in float64. Larger H needs a kernel that splits ``W_hh`` across programs (FlashRNN does,
#: with a grid-wide barrier per step); this one does not.
ONCHIP_BYTES = 64 * 1024

#: Batch rows per program: the smallest M that Triton's ``tl.dot`` takes. Smaller blocks
#: mean more programs (SMs) for a given batch; each program re-reads ``W_hh`` once.
BLOCK_B = 16

_MIN_DIM = 16  # Triton's tl.dot: M, N, K >= 16

#: Triton launch parameters: one warp group of 4 warps; no software pipelining, since the
#: loop body depends on the previous step (num_stages=1 keeps the lowering simplest).
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=1)


def default_interpret() -> bool:
    """True unless the default backend is a GPU: elsewhere the kernels run interpreted."""
    return jax.default_backend() != "gpu"


def padded_hidden(H: int) -> int:
    """``Hp``: ``H`` padded to a power of two >= 16 (Triton's block and dot constraints)."""
    return max(_MIN_DIM, pl.next_power_of_2(H))


def unsupported(hidden: int, gates: int, dtype) -> str | None:
    """Why the Pallas loop cannot run a cell of width ``hidden`` with ``gates`` gates in
    ``dtype`` (None: it can). Used by the cells at construction and here at every call."""
    dtype = jnp.dtype(dtype)
    if dtype not in FUSED_DTYPES:
        return f"the Pallas loop runs in float32 or float64, not {dtype}"
    Hp = padded_hidden(hidden)
    nbytes = Hp * gates * Hp * dtype.itemsize
    if nbytes > ONCHIP_BYTES:
        fits = max(h for h in (16, 32, 64, 128, 256, 512)
                   if h * gates * h * dtype.itemsize <= ONCHIP_BYTES)
        return (f"the kernel keeps W_hh on chip, and at H={hidden} (padded to {Hp}) its "
                f"({Hp}, {gates}*{Hp}) {dtype} copy is {nbytes // 1024} KiB, over the "
                f"{ONCHIP_BYTES // 1024} KiB limit (pallas_rnn.ONCHIP_BYTES: H <= {fits} in "
                f"{dtype}; the other impls, and cuDNN's kernels, take any H)")
    return None


# ---------------------------------------------------------------------------
# Padding and flags (outside the kernels)
# ---------------------------------------------------------------------------
def _pad_gates(a: Array, G: int, Hp: int) -> Array:
    """``(..., G*H) -> (..., G*Hp)``: each gate block zero-padded to ``Hp`` columns."""
    H = a.shape[-1] // G
    if H == Hp:
        return a
    a = a.reshape(*a.shape[:-1], G, H)
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, Hp - H)])
    return a.reshape(*a.shape[:-2], G * Hp)


def _unpad_gates(a: Array, G: int, H: int) -> Array:
    """``(..., G*Hp) -> (..., G*H)``: the inverse of :func:`_pad_gates`."""
    Hp = a.shape[-1] // G
    if H == Hp:
        return a
    return a.reshape(*a.shape[:-1], G, Hp)[..., :H].reshape(*a.shape[:-1], G * H)


def _pad_axis(a: Array, axis: int, size: int) -> Array:
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


def _flags(mask: Array | None, resets: Array | None, T: int, B: int, Bp: int) -> Array:
    """``(T, Bp)`` int32: bit 0 valid, bit 1 reset (only on valid steps); padded rows 0."""
    valid = jnp.ones((T, B), bool) if mask is None else mask.astype(bool)
    flags = valid.astype(jnp.int32)
    if resets is not None:
        flags = flags | ((resets.astype(bool) & valid).astype(jnp.int32) << 1)
    return _pad_axis(flags, 1, Bp)


def _bits(f: Array) -> tuple[Array, Array]:
    """One step's flags ``(b,)`` -> ``(valid, reset)``, each ``(b, 1)`` bool."""
    f = f[:, None]
    return (f & 1) != 0, (f & 2) != 0


def _blk(k: int, Hp: int) -> slice:
    return slice(k * Hp, (k + 1) * Hp)


# ---------------------------------------------------------------------------
# pallas_call plumbing: a 1-D grid over batch blocks
# ---------------------------------------------------------------------------
def _spec(kind: str, shape: tuple[int, ...], bb: int) -> pl.BlockSpec:
    """The block of one operand for batch block ``i``: ``time`` ``(T, Bp, X)``,
    ``flags`` ``(T, Bp)``, ``rows`` ``(Bp, X)``, or ``full`` (every program reads it all)."""
    if kind == "time":
        return pl.BlockSpec((shape[0], bb, shape[2]), lambda i: (0, i, 0))
    if kind == "flags":
        return pl.BlockSpec((shape[0], bb), lambda i: (0, i))
    if kind == "rows":
        return pl.BlockSpec((bb, shape[1]), lambda i: (i, 0))
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _call(kernel, ins, outs, *, bb: int, interpret: bool, name: str):
    """``pallas_call`` of ``kernel`` on ``ins`` ``[(array, kind)]`` -> ``outs``
    ``[(ShapeDtypeStruct, kind)]``, one program per ``bb`` batch rows."""
    Bp = next(a.shape[1] for a, kind in ins if kind in ("time", "flags"))
    return pl.pallas_call(
        kernel,
        out_shape=[s for s, _ in outs],
        grid=(Bp // bb,),
        in_specs=[_spec(kind, a.shape, bb) for a, kind in ins],
        out_specs=[_spec(kind, s.shape, bb) for s, kind in outs],
        compiler_params=_TRITON,
        interpret=interpret,
        name=name,
    )(*[a for a, _ in ins])


class _Cfg(NamedTuple):
    """The static part of one loop: what the custom VJP does not differentiate."""

    gates: Callable
    reverse: bool
    interpret: bool
    bb: int


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------
def _lstm_fwd_kernel(cfg, keep, flags_ref, xp_ref, w_ref, scale_ref, h0_ref, c0_ref,
                     ys_ref, h_ref, c_ref, *res_refs):
    T, Hp = xp_ref.shape[0], h0_ref.shape[-1]
    w = w_ref[...]  # (Hp, 4Hp): read once, on chip for every step
    scale = scale_ref[...]  # (1, 4Hp)
    h0, c0 = h0_ref[...], c0_ref[...]

    def body(s, carry):
        h, c = carry
        t = T - 1 - s if cfg.reverse else s
        valid, reset = _bits(flags_ref[t])
        h_in, c_in = jnp.where(reset, h0, h), jnp.where(reset, c0, c)
        i, f, gs, o = cfg.gates(xp_ref[t] + jnp.dot(h_in, w), scale)
        c_new = f * c_in + i * (2 * gs - 1)
        h_new = o * jnp.tanh(c_new)
        ys_ref[t] = jnp.where(valid, h_new, 0)
        if keep:
            hin_ref, cin_ref, act_ref = res_refs
            hin_ref[t], cin_ref[t] = h_in, c_in
            for k, a in enumerate((i, f, gs, o)):
                act_ref[t, :, _blk(k, Hp)] = a
        return jnp.where(valid, h_new, h), jnp.where(valid, c_new, c)

    h, c = jax.lax.fori_loop(0, T, body, (h0, c0))
    h_ref[...], c_ref[...] = h, c


def _lstm_bwd_kernel(cfg, flags_ref, act_ref, cin_ref, dys_ref, wt_ref, dh_ref, dc_ref,
                     dxp_ref, dh0_ref, dc0_ref):
    T, Hp = act_ref.shape[0], dh_ref.shape[-1]
    wt = [wt_ref[_blk(k, Hp), :] for k in range(4)]  # W_hh^T per gate, (Hp, Hp), on chip

    def body(s, carry):
        dh, dc, acc_h, acc_c = carry
        t = s if cfg.reverse else T - 1 - s  # the forward's steps, last first
        valid, reset = _bits(flags_ref[t])
        i, f, gs, o = (act_ref[t, :, _blk(k, Hp)] for k in range(4))
        c_in = cin_ref[t]
        g = 2 * gs - 1
        tc = jnp.tanh(f * c_in + i * g)  # tanh(c_new), recomputed: not stored
        # As lstm.py's _lstm_bwd: a masked step gets no gate gradient and passes dh, dc on.
        dh_t = jnp.where(valid, dh + dys_ref[t], 0)
        dc_t = jnp.where(valid, dc, 0)
        dct = dc_t + dh_t * o * (1 - tc * tc)
        # d pre-activation per gate; g = 2 sigmoid(2x) - 1 has derivative 4 gs (1 - gs).
        dgates = (dct * g * i * (1 - i), dct * c_in * f * (1 - f),
                  dct * i * 4 * gs * (1 - gs), dh_t * tc * o * (1 - o))
        dh_prev = jnp.dot(dgates[0], wt[0])
        for k in range(4):
            dxp_ref[t, :, _blk(k, Hp)] = dgates[k]
            if k:
                dh_prev = dh_prev + jnp.dot(dgates[k], wt[k])
        dh_prev = jnp.where(valid, dh_prev, dh)
        dc_prev = jnp.where(valid, dct * f, dc)
        # A restarted step read the initial carry, not the previous step's.
        acc_h = acc_h + jnp.where(reset, dh_prev, 0)
        acc_c = acc_c + jnp.where(reset, dc_prev, 0)
        return (jnp.where(reset, 0, dh_prev), jnp.where(reset, 0, dc_prev), acc_h, acc_c)

    zeros = jnp.zeros(dh_ref.shape, dh_ref.dtype)
    dh, dc, acc_h, acc_c = jax.lax.fori_loop(0, T, body, (dh_ref[...], dc_ref[...], zeros, zeros))
    dh0_ref[...], dc0_ref[...] = dh + acc_h, dc + acc_c


def _lstm_forward(cfg, w, scale, xp, h0, c0, flags, keep):
    """Pads, runs the forward kernel, unpads. Returns ``((h, c), ys, residuals or None)``."""
    T, B, _ = xp.shape
    H, Bp = h0.shape[-1], flags.shape[1]
    Hp = padded_hidden(H)
    wp = _pad_axis(_pad_gates(w, 4, Hp), 0, Hp)
    xpp = _pad_axis(_pad_gates(xp, 4, Hp), 1, Bp)
    h0p, c0p = (_pad_axis(_pad_axis(a, 1, Hp), 0, Bp) for a in (h0, c0))
    sd = partial(jax.ShapeDtypeStruct, dtype=xp.dtype)
    outs = [(sd((T, Bp, Hp)), "time"), (sd((Bp, Hp)), "rows"), (sd((Bp, Hp)), "rows")]
    if keep:
        outs += [(sd((T, Bp, Hp)), "time"), (sd((T, Bp, Hp)), "time"),
                 (sd((T, Bp, 4 * Hp)), "time")]
    ins = [(flags, "flags"), (xpp, "time"), (wp, "full"), (scale, "full"), (h0p, "rows"),
           (c0p, "rows")]
    ys, h, c, *res = _call(partial(_lstm_fwd_kernel, cfg, keep), ins, outs, bb=cfg.bb,
                           interpret=cfg.interpret, name="lstm_pallas_fwd")
    out = (h[:B, :H], c[:B, :H]), ys[:, :B, :H]
    return (*out, (wp, *res) if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(cfg, w, scale, xp, h0, c0, flags):
    carry, ys, _ = _lstm_forward(cfg, w, scale, xp, h0, c0, flags, keep=False)
    return carry, ys


def _lstm_fwd(cfg, w, scale, xp, h0, c0, flags):
    carry, ys, res = _lstm_forward(cfg, w, scale, xp, h0, c0, flags, keep=True)
    return (carry, ys), (res, scale, flags)


def _lstm_bwd(cfg, residuals, cts):
    (wp, hin, cin, act), scale, flags = residuals
    (dh_T, dc_T), dys = cts
    T, B, H = dys.shape
    Bp, Hp = hin.shape[1], hin.shape[2]
    pad_rows = lambda a: _pad_axis(_pad_axis(a, a.ndim - 1, Hp), a.ndim - 2, Bp)  # noqa: E731
    sd = partial(jax.ShapeDtypeStruct, dtype=dys.dtype)
    ins = [(flags, "flags"), (act, "time"), (cin, "time"), (pad_rows(dys), "time"),
           (wp.T, "full"), (pad_rows(dh_T), "rows"), (pad_rows(dc_T), "rows")]
    outs = [(sd((T, Bp, 4 * Hp)), "time"), (sd((Bp, Hp)), "rows"), (sd((Bp, Hp)), "rows")]
    dxp, dh0, dc0 = _call(partial(_lstm_bwd_kernel, cfg), ins, outs, bb=cfg.bb,
                          interpret=cfg.interpret, name="lstm_pallas_bwd")
    dxp = _unpad_gates(dxp[:, :B], 4, H)
    dw = _outer_sum(hin[:, :B, :H], dxp)
    return dw, jnp.zeros_like(scale), dxp, dh0[:B, :H], dc0[:B, :H], None


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


# ---------------------------------------------------------------------------
# GRU (cuDNN form: the reset gate multiplies (h W_hn + b_hn))
# ---------------------------------------------------------------------------
def _gru_fwd_kernel(cfg, keep, flags_ref, xp_ref, w_ref, bhn_ref, h0_ref, ys_ref, h_ref,
                    *res_refs):
    T, Hp = xp_ref.shape[0], h0_ref.shape[-1]
    w_r, w_z, w_n = (w_ref[:, _blk(k, Hp)] for k in range(3))  # on chip for every step
    b_hn = bhn_ref[...]  # (1, Hp)
    h0 = h0_ref[...]

    def body(s, h):
        t = T - 1 - s if cfg.reverse else s
        valid, reset = _bits(flags_ref[t])
        h_in = jnp.where(reset, h0, h)
        xr, xz, xn = (xp_ref[t, :, _blk(k, Hp)] for k in range(3))
        r, z, n, hn = cfg.gates(h_in, xr, xz, xn, w_r, w_z, w_n, b_hn)
        h_new = n + z * (h_in - n)
        ys_ref[t] = jnp.where(valid, h_new, 0)
        if keep:
            hin_ref, act_ref = res_refs
            hin_ref[t] = h_in
            for k, a in enumerate((r, z, n, hn)):
                act_ref[t, :, _blk(k, Hp)] = a
        return jnp.where(valid, h_new, h)

    h_ref[...] = jax.lax.fori_loop(0, T, body, h0)


def _gru_bwd_kernel(cfg, flags_ref, act_ref, hin_ref, dys_ref, wt_ref, dh_ref, dxp_ref,
                    dh0_ref):
    T, Hp = act_ref.shape[0], dh_ref.shape[-1]
    wt_r, wt_z, wt_n = (wt_ref[_blk(k, Hp), :] for k in range(3))  # W_hh^T per gate

    def body(s, carry):
        dh, acc = carry
        t = s if cfg.reverse else T - 1 - s
        valid, reset = _bits(flags_ref[t])
        r, z, n, hn = (act_ref[t, :, _blk(k, Hp)] for k in range(4))
        # As gru.py's _gru_bwd.
        dh_t = jnp.where(valid, dh + dys_ref[t], 0)
        dn = dh_t * (1 - z) * (1 - n * n)  # d n-pre-activation
        dr = dn * hn * r * (1 - r)
        dz = dh_t * (hin_ref[t] - n) * z * (1 - z)
        for k, d in enumerate((dr, dz, dn)):
            dxp_ref[t, :, _blk(k, Hp)] = d
        dh_prev = (dh_t * z + jnp.dot(dr, wt_r) + jnp.dot(dz, wt_z)
                   + jnp.dot(dn * r, wt_n))
        dh_prev = jnp.where(valid, dh_prev, dh)
        acc = acc + jnp.where(reset, dh_prev, 0)
        return jnp.where(reset, 0, dh_prev), acc

    dh, acc = jax.lax.fori_loop(0, T, body, (dh_ref[...], jnp.zeros(dh_ref.shape, dh_ref.dtype)))
    dh0_ref[...] = dh + acc


def _gru_forward(cfg, w, b_hn, xp, h0, flags, keep):
    T, B, _ = xp.shape
    H, Bp = h0.shape[-1], flags.shape[1]
    Hp = padded_hidden(H)
    wp = _pad_axis(_pad_gates(w, 3, Hp), 0, Hp)
    xpp = _pad_axis(_pad_gates(xp, 3, Hp), 1, Bp)
    h0p = _pad_axis(_pad_axis(h0, 1, Hp), 0, Bp)
    sd = partial(jax.ShapeDtypeStruct, dtype=xp.dtype)
    outs = [(sd((T, Bp, Hp)), "time"), (sd((Bp, Hp)), "rows")]
    if keep:
        outs += [(sd((T, Bp, Hp)), "time"), (sd((T, Bp, 4 * Hp)), "time")]
    ins = [(flags, "flags"), (xpp, "time"), (wp, "full"),
           (_pad_axis(b_hn, 0, Hp)[None], "full"), (h0p, "rows")]
    ys, h, *res = _call(partial(_gru_fwd_kernel, cfg, keep), ins, outs, bb=cfg.bb,
                        interpret=cfg.interpret, name="gru_pallas_fwd")
    return h[:B, :H], ys[:, :B, :H], ((wp, *res) if keep else None)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru(cfg, w, b_hn, xp, h0, flags):
    h, ys, _ = _gru_forward(cfg, w, b_hn, xp, h0, flags, keep=False)
    return h, ys


def _gru_fwd(cfg, w, b_hn, xp, h0, flags):
    h, ys, res = _gru_forward(cfg, w, b_hn, xp, h0, flags, keep=True)
    return (h, ys), (res, flags)


def _gru_bwd(cfg, residuals, cts):
    (wp, hin, act), flags = residuals
    dh_T, dys = cts
    T, B, H = dys.shape
    Bp, Hp = hin.shape[1], hin.shape[2]
    pad_rows = lambda a: _pad_axis(_pad_axis(a, a.ndim - 1, Hp), a.ndim - 2, Bp)  # noqa: E731
    sd = partial(jax.ShapeDtypeStruct, dtype=dys.dtype)
    ins = [(flags, "flags"), (act, "time"), (hin, "time"), (pad_rows(dys), "time"),
           (wp.T, "full"), (pad_rows(dh_T), "rows")]
    outs = [(sd((T, Bp, 3 * Hp)), "time"), (sd((Bp, Hp)), "rows")]
    dxp, dh0 = _call(partial(_gru_bwd_kernel, cfg), ins, outs, bb=cfg.bb,
                     interpret=cfg.interpret, name="gru_pallas_bwd")
    dxp = _unpad_gates(dxp[:, :B], 3, H)
    # d (h W_hh) differs from dxp only in the n block: r * (h W_hn + b_hn) gives dn * r.
    dhn = dxp[..., 2 * H:] * act[:, :B, :H]
    dw = _outer_sum(hin[:, :B, :H], jnp.concatenate([dxp[..., :2 * H], dhn], axis=-1))
    return dw, jnp.sum(dhn, axis=(0, 1)), dxp, dh0[:B, :H], None


_gru.defvjp(_gru_fwd, _gru_bwd)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------
def _prepare(where, w_hh, xp, carry, gates, mask, resets, block_b, interpret):
    """Validates the operands; returns ``(interpret, flags)``, flags ``(T, Bp)``."""
    _check(xp, w_hh, gates, mask, where, resets)
    H = w_hh.shape[0]
    T, B = xp.shape[:2]
    dtypes = {jnp.dtype(a.dtype) for a in (xp, w_hh, *jax.tree.leaves(carry))}
    if len(dtypes) != 1:
        raise ValueError(f"{where}: inputs, recurrent weight and carry need one dtype, got "
                         f"{sorted(str(d) for d in dtypes)}; cast them, or use impl='scan'")
    why = unsupported(H, gates, dtypes.pop())
    if why:
        raise ValueError(f"{where}: {why}; use the fused or the plain loop (impl='fused' or "
                         f"impl='scan' in a cell)")
    for leaf in jax.tree.leaves(carry):
        if leaf.shape != (B, H):
            raise ValueError(f"{where}: carry leaves must be (B, H) = {(B, H)}, got {leaf.shape}")
    if block_b < _MIN_DIM or block_b & (block_b - 1):
        raise ValueError(f"{where}: block_b must be a power of two >= {_MIN_DIM} (Triton's "
                         f"block and dot constraints), got {block_b}")
    interpret = default_interpret() if interpret is None else bool(interpret)
    Bp = -(-B // block_b) * block_b
    return interpret, _flags(mask, resets, T, B, Bp)


def lstm_scan(
    w_hh: Array,
    xp: Array,
    carry,
    mask: Array | None = None,
    *,
    gates: Callable,
    gate_scale: Callable,
    reverse: bool = False,
    resets: Array | None = None,
    interpret: bool | None = None,
    block_b: int = BLOCK_B,
) -> tuple[LSTMState, Array]:
    """The LSTM over time-major projected inputs, as Pallas kernels (see the module docstring).

    Args:
      w_hh: ``(H, 4H)`` recurrent kernel, gate order ``i, f, g, o``.
      xp: ``(T, B, 4H)`` projected inputs (``x W_ih + b_ih + b_hh``).
      carry: ``(h, c)``, each ``(B, H)``.
      mask: ``(T, B)`` bool or None.
      gates: the cell's gate function, ``rnnjax.nn.lstm.lstm_gates``:
        ``(pre (b, 4Hp), scale (1, 4Hp)) -> (i, f, gs, o)``, each ``(b, Hp)``. In the GPU
        lowering it may use only ops Triton lowers (no slicing; ``jnp.split`` works).
      gate_scale: ``rnnjax.nn.lstm.lstm_gate_scale``: ``(H, dtype) -> (4H,)``, the
        pre-activation scale that ``gates`` takes.
      reverse: run ``t = T-1 .. 0``, as :func:`rnnjax.nn.scan.masked_scan`.
      resets: ``(T, B)`` bool or None: restart from ``carry`` before the step
        (:mod:`rnnjax.nn.scan`'s reset convention).
      interpret: None: interpreted unless the default backend is a GPU
        (:func:`default_interpret`); True/False force it.
      block_b: batch rows per program, a power of two >= 16.

    Returns:
      ``(LSTMState(h, c), ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    h0, c0 = carry
    interpret, flags = _prepare("pallas_rnn.lstm_scan", w_hh, xp, (h0, c0), 4, mask, resets,
                                block_b, interpret)
    if xp.shape[0] == 0:
        return LSTMState(h0, c0), jnp.zeros((*xp.shape[:2], w_hh.shape[0]), xp.dtype)
    scale = gate_scale(padded_hidden(w_hh.shape[0]), xp.dtype)[None]
    cfg = _Cfg(gates, bool(reverse), interpret, block_b)
    (h, c), ys = _lstm(cfg, w_hh, scale, xp, h0, c0, flags)
    return LSTMState(h, c), ys


def gru_scan(
    w_hh: Array,
    b_hn: Array,
    xp: Array,
    h0: Array,
    mask: Array | None = None,
    *,
    gates: Callable,
    reverse: bool = False,
    resets: Array | None = None,
    interpret: bool | None = None,
    block_b: int = BLOCK_B,
) -> tuple[Array, Array]:
    """The GRU (cuDNN form) over time-major projected inputs, as Pallas kernels.

    Args:
      w_hh: ``(H, 3H)`` recurrent kernel, gate order ``r, z, n``.
      b_hn: ``(H,)`` the hidden bias of the n gate (inside ``r * (h W_hn + b_hn)``).
      xp: ``(T, B, 3H)`` projected inputs (``x W_ih + b_ih + [b_hr, b_hz, 0]``).
      h0: ``(B, H)`` initial carry.
      mask: ``(T, B)`` bool or None.
      gates: the cell's gate function, ``rnnjax.nn.gru.gru_gates``:
        ``(h, xr, xz, xn, w_r, w_z, w_n, b_hn) -> (r, z, n, hn)`` on ``(b, Hp)`` tiles.
      reverse, resets, interpret, block_b: as :func:`lstm_scan`.

    Returns:
      ``(h, ys)`` with ``ys`` ``(T, B, H)``, zero where masked.
    """
    interpret, flags = _prepare("pallas_rnn.gru_scan", w_hh, xp, h0, 3, mask, resets, block_b,
                                interpret)
    if b_hn.shape != (w_hh.shape[0],):
        raise ValueError(f"pallas_rnn.gru_scan: b_hn must be (H,) = ({w_hh.shape[0]},), got "
                         f"{b_hn.shape}")
    if xp.shape[0] == 0:
        return h0, jnp.zeros((*xp.shape[:2], w_hh.shape[0]), xp.dtype)
    cfg = _Cfg(gates, bool(reverse), interpret, block_b)
    return _gru(cfg, w_hh, b_hn.astype(xp.dtype), xp, h0, flags)
