"""Generic machinery for fused time loops with a hand-written backward (custom VJP).

What it is for: training speed on XLA:CPU (it is also faster on GPUs, where it
was checked). ``jax.grad`` of a ``lax.scan`` stores every intermediate of every
step and, in its reverse loop, computes ``dW_hh`` one small matmul per step. A
fused loop (``rnnjax/nn/lstm.py`` and ``rnnjax/nn/gru.py`` hold theirs, next to
the gate function they share with the cell's step) runs the same recurrence as
the cell's ``step_projected`` under :func:`rnnjax.nn.scan.masked_scan`, but

* its forward loop keeps only what the backward needs (the gate activations
  and the carries);
* its backward loop is a reverse ``lax.scan`` that carries only the state
  gradients and emits the gate gradients ``(T, B, G*H)``, which are ``dxp``;
* ``dW_hh`` is then ONE ``(H, T*B) x (T*B, G*H)`` matmul after the loop
  (:func:`_outer_sum`).

This module holds the pieces every such loop uses: the row-block loop
:func:`_lane_scan` and its rule :func:`lanes_for`, :func:`_shift`,
:func:`_outer_sum`, the shape check, and :func:`project`, the input projection
with a fast backward. Layout choices are measured (``docs/performance.md`` §1,
§4, §8, and the "Why" comments below).

Whether a cell uses a fused loop is the cell's ``impl`` argument (``"auto"`` |
``"fused"`` | ``"scan"``), never a switch in here. ``custom_vjp`` has no
forward-mode rule, so code that needs ``jax.jvp`` / ``jax.jacfwd`` through a
recurrence builds its cells with ``impl="scan"``.

This module must never import cells, layers or anything above ``rnnjax.nn``,
and must never change what the plain path computes: it is an optimisation
only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.nn.types import Array

#: Dtypes the fused loops and the fused projection are used for. Others (bfloat16,
#: float16) take the plain path, whose autodiff keeps the dtype handling of the cell code.
FUSED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


def can_fuse(xp: Array, w_hh: Array, carry) -> bool:
    """True when a fused loop applies: xp, W_hh and carry share a float32/float64 dtype."""
    dt = jnp.dtype(xp.dtype)
    if dt not in FUSED_DTYPES or jnp.dtype(w_hh.dtype) != dt:
        return False
    return all(jnp.dtype(leaf.dtype) == dt for leaf in jax.tree.leaves(carry))


def can_project(x: Array, w: Array) -> bool:
    """True when :func:`project` applies: x and W share a float32/float64 dtype."""
    dt = jnp.dtype(x.dtype)
    return dt in FUSED_DTYPES and jnp.dtype(w.dtype) == dt


def dense_projection(x: Array, w: Array, b: Array, *, impl: str, where: str) -> Array:
    """``x W + b`` by :func:`project` unless ``impl == "scan"`` (a plain matmul, which
    forward-mode autodiff can go through). ``impl="auto"`` falls back to the plain
    matmul where :func:`project` does not apply; ``impl="fused"`` raises there."""
    if impl != "scan" and can_project(x, w):
        return project(x, w, b)
    if impl == "fused":
        raise ValueError(
            f"{where}: impl='fused' needs inputs and weights of one float32/float64 dtype, got "
            f"{jnp.dtype(x.dtype)} and {jnp.dtype(w.dtype)}; use impl='auto' or impl='scan'")
    return x @ w + b


def _check(xp: Array, w_hh: Array, gates: int, mask: Array | None, where: str,
           resets: Array | None = None) -> None:
    if resets is not None and resets.shape != xp.shape[:2]:
        raise ValueError(f"{where}: resets must be (T, B) = {xp.shape[:2]}, got {resets.shape}")
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


# The lane rule's thresholds, measured on the 2-core machine (docs/performance.md §8).
_LANE_MAX_HIDDEN = 256  # above it XLA:CPU spreads each step's dots over the cores itself
_LANE_MIN_MACS = 4_000_000  # multiply-adds per step (B*H*H*G), LSTM-like loops
_LANE_MIN_MACS_GRU = 6_000_000  # the GRU below H=256 (three per-gate matmuls per block)
_LANE_MIN_ROWS = 4


def lanes_for(batch: int, hidden: int, gates: int, lanes: int | None = None) -> int:
    """How many independent row blocks a loop body cuts the batch into.

    ``lanes`` is the cell's ``lanes`` argument: an int forces that many blocks (1:
    off; a count that does not divide the batch gives 1), None picks per shape.

    Why: the ops of one step depend on each other, so a step keeps at most one
    matmul and one fusion in flight. Cut into row blocks, the body holds one
    chain per block, and XLA:CPU's executor runs the blocks' matmuls concurrently.
    Measured on the 2-core machine over H 64-512 and B 16-128 (``scripts/bench_lanes.py``,
    training step, T=64, docs/performance.md §8): LSTM 2 blocks 1.02-1.21x one block from
    4M multiply-adds a step up to H=256 (4 blocks no better); GRU 4 blocks (its three
    per-gate matmuls make each chain short) 1.02-1.19x at H=256 from B=16 and at H=128
    from B=128, but 0.99-1.01x at H=128, B=64, which has the same 3.1M multiply-adds as
    H=256, B=16: hence the GRU's rule on H. At H=512 blocks cost 2-32%: each step's
    matmuls are big enough for XLA to spread over both cores itself. Below the thresholds
    blocks gained at most 1.09x in one run and 1.00-1.02x in another, or cost. CPU backend
    only: on a GPU they would only add kernel launches.
    """
    if lanes is not None:
        return lanes if lanes > 1 and batch % lanes == 0 else 1
    if jax.default_backend() != "cpu" or hidden > _LANE_MAX_HIDDEN:
        return 1
    macs = batch * hidden * hidden * gates
    if gates == 3:
        enough = hidden >= _LANE_MAX_HIDDEN or macs >= _LANE_MIN_MACS_GRU
    else:
        enough = macs >= _LANE_MIN_MACS
    if not enough:
        return 1
    for n in ((4, 2) if gates == 3 else (2,)):
        if batch % n == 0 and batch // n >= _LANE_MIN_ROWS:
            return n
    return 1


def _shift(a: Array, a0: Array, reverse: bool, resets: Array | None = None) -> Array:
    """The carry entering each step ``(T, B, H)``, from the carries after each step
    (``a0`` where ``resets`` restarts a segment)."""
    if reverse:
        out = jnp.concatenate([a[1:], a0[None]], axis=0)
    else:
        out = jnp.concatenate([a0[None], a[:-1]], axis=0)
    return out if resets is None else jnp.where(resets[..., None], a0[None], out)


def _valid_resets(resets: Array | None, mask: Array | None) -> Array | None:
    """Resets as bool, only on valid steps (a reset on a masked step does nothing)."""
    if resets is None:
        return None
    resets = resets.astype(bool)
    return resets if mask is None else resets & mask


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
        return tuple(jax.tree.map(lambda a, p=p: a[p * Bp : (p + 1) * Bp], tree) for p in range(P))

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
