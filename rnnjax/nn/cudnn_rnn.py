"""NVIDIA cuDNN's LSTM for :class:`rnnjax.nn.LSTMCell` (``impl="cudnn"``), through
``jax.experimental.rnn``.

What it is for: speed on NVIDIA GPUs, where cuDNN runs the whole time loop (and its
backward) as one library call instead of one XLA loop iteration per step. It must give
the numbers the cell's plain step gives; it is an optimisation only, chosen by the
cell's ``impl`` argument, never by a switch in here.

How the cell's weights map (PyTorch layout, gate order ``i, f, g, o``, which is also
cuDNN's; ``jax.experimental.rnn``'s module docstring documents the flat layout)::

    cuDNN flat vector, one pseudo-layer per (layer, direction) in the order
    forward-0, reverse-0, forward-1, ...:
      [W_ih^0 (4H, E), W_hh^0 (4H, H), W_ih^1, W_hh^1, ..., b_ih^0, b_hh^0, b_ih^1, ...]
    one cell:  W_ih = w_ih.T,  W_hh = w_hh.T,  b_ih = b_ih,  b_hh = b_hh

The cell stores plain pre-activation weights (its ``[1, 1, 2, 1]`` gate scale, which
computes ``tanh`` through a sigmoid, is applied inside the gate function, not to the
weights), and ``forget_bias`` is already inside ``b_hh``, so nothing else is rescaled.
(``swap_lstm_gates`` exists for AMD's MIOpen, whose gate order differs; CUDA needs no
swap.)

Lengths and directions. cuDNN takes ``seq_lengths`` ``(B,)`` with right padding and
writes zeros past each row's length; the final ``h, c`` are each row's at its own last
step: PyTorch's packed-sequence semantics, the layers' own (:mod:`rnnjax.nn.scan`). The
cell runs one unidirectional, one-layer call per layer and direction; a reverse
direction reverses each row within its own length (:func:`flip_within`), runs forward,
and reverses the outputs back, which is exactly the masked reverse scan: each row
starts from the initial carry at its last valid step and ends at ``t = 0``. A row of
length 0 (possible only through a mask, which the layers allow) keeps its initial carry
and outputs zeros; cuDNN itself rejects zero lengths (jax-ml/jax#17966), so such rows
run one throw-away step whose results are discarded.

Limits of the kernel, checked by the cell before it is called: float32 only (the
kernel hard-codes ``CUDNN_DATA_FLOAT``), CUDA only (the ROCm lowering needs gate
swaps and has no bidirectional support), no per-step perturbations (zoneout), no
packed-segment resets. Precision follows ``jax.default_matmul_precision``: by default
cuDNN may use TF32 tensor cores, as XLA's own float32 matmuls on the GPU do; under
``"highest"`` (or ``"float32"``) it runs exact float32 FMA maths.

:func:`lstm_reference` is ``jax.experimental.rnn.lstm_ref`` (pure JAX, runs anywhere)
behind the kernel's own signature, so the packing and the length/direction mapping are
tested on any machine (``tests/test_cudnn.py``); JAX's own GPU tests check ``lstm_ref``
against cuDNN with ragged lengths, bidirectional stacks and weight gradients.

This module must never import a cell, a layer, or anything above ``rnnjax.nn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import rnn as jrnn

from rnnjax.nn.types import Array

#: The dtype the kernel runs in (``jax.experimental.rnn``'s cuDNN call is float32 only).
CUDNN_DTYPE = jnp.dtype(jnp.float32)

#: The kernel's call signature, ``jax.experimental.rnn.lstm``'s:
#: ``(x (B, T, E), h0 (L*D, B, H), c0, weights (P,), seq_lengths (B,) int32, input_size,
#: hidden_size, num_layers, dropout, bidirectional) -> (y (B, T, D*H), h_n, c_n)``.
Kernel = Callable[..., tuple[Array, Array, Array]]


def cuda_problem() -> str | None:
    """Why cuDNN cannot run here (None: JAX's default backend is a CUDA GPU)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return (f"it needs an NVIDIA GPU with CUDA, and JAX's default backend here is "
                f"{backend!r} (devices: {[str(d) for d in jax.devices()]})")
    try:
        jax.devices("cuda")
    except RuntimeError:
        return ("JAX's GPU backend here is not CUDA (the ROCm cuDNN-equivalent path needs "
                "gate swaps and has no bidirectional support)")
    return None


def pack_lstm_weights(layers: Sequence[tuple[Array, Array, Array, Array]]) -> Array:
    """Cells' ``(w_ih (E_l, 4H), w_hh (H, 4H), b_ih (4H,), b_hh (4H,))`` -> cuDNN's flat vector.

    ``layers`` lists the pseudo-layers in cuDNN's order (forward-0, reverse-0,
    forward-1, ... for a bidirectional stack). The inverse is
    ``jax.experimental.rnn.unpack_lstm_weights`` (which returns the transposes).
    """
    mats = [w.T.reshape(-1) for w_ih, w_hh, _, _ in layers for w in (w_ih, w_hh)]
    biases = [b for _, _, b_ih, b_hh in layers for b in (b_ih, b_hh)]
    return jnp.concatenate(mats + biases)


def lstm_reference(x, h0, c0, weights, seq_lengths, input_size, hidden_size, num_layers,
                   dropout, bidirectional, precision=None):
    """``jax.experimental.rnn.lstm_ref`` behind the cuDNN kernel's signature: the same
    flat weights, lengths and outputs, in pure JAX (any backend). ``precision`` is
    accepted for the signature and unused (the reference follows the default matmul
    precision)."""
    del precision
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                      num_layers, bidirectional)
    return jrnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                         hidden_size, num_layers, dropout, bidirectional)


def default_kernel() -> Kernel:
    """The kernel the cells call: cuDNN's, through ``jax.experimental.rnn.lstm``.

    A function, so that a test on a machine without a GPU can put
    :func:`lstm_reference` in its place and run the cells' whole cuDNN path.
    """
    return jrnn.lstm


def flip_within(x: Array, lengths: Array) -> Array:
    """Reverses each row of batch-major ``x`` ``(B, T, ...)`` within its own length.

    ``out[b, t] = x[b, lengths[b] - 1 - t]`` for ``t < lengths[b]``, else ``x[b, t]``;
    padding stays at the end. It is its own inverse.
    """
    T = x.shape[1]
    t = jnp.arange(T)[None, :]
    n = lengths[:, None]
    idx = jnp.where(t < n, n - 1 - t, t)  # (B, T)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def lstm_sequence(
    x: Array,
    carry: tuple[Array, Array],
    w_ih: Array,
    w_hh: Array,
    b_ih: Array,
    b_hh: Array,
    seq_lengths: Array | None = None,
    *,
    reverse: bool = False,
    kernel: Kernel | None = None,
) -> tuple[tuple[Array, Array], Array]:
    """One LSTM layer in one direction through the cuDNN kernel, in the layers' semantics.

    Args:
      x: time-major inputs ``(T, B, E)``, float32.
      carry: ``(h0, c0)``, each ``(B, H)`` float32.
      w_ih, w_hh, b_ih, b_hh: the cell's weights, ``(E, 4H)``, ``(H, 4H)``, ``(4H,)``,
        ``(4H,)``, gate order ``i, f, g, o`` (see the module docstring).
      seq_lengths: ``(B,)`` int (clipped to ``[0, T]``), or None for full length.
      reverse: run each row from its last valid step back to ``t = 0``.
      kernel: the kernel (:data:`Kernel`); None: :func:`default_kernel`.

    Returns:
      ``((h, c), ys)``: each row's final carry and ``ys`` ``(T, B, H)``, zero past each
      row's length, as :func:`rnnjax.nn.scan.masked_scan` with the prefix mask.
    """
    kernel = default_kernel() if kernel is None else kernel
    T, B, E = x.shape
    H = w_hh.shape[0]
    h0, c0 = carry
    if seq_lengths is None:
        lengths = jnp.full((B,), T, jnp.int32)
    else:
        lengths = jnp.clip(jnp.asarray(seq_lengths), 0, T).astype(jnp.int32)
    run = jnp.maximum(lengths, 1)  # cuDNN rejects length 0; those rows are undone below
    xb = jnp.swapaxes(x, 0, 1)  # (B, T, E): the kernel's layout
    if reverse:
        xb = flip_within(xb, run)
    weights = pack_lstm_weights([(w_ih, w_hh, b_ih, b_hh)])
    y, h_n, c_n = kernel(xb, h0[None], c0[None], weights, run, E, H, 1, 0.0, False)
    if reverse:
        y = flip_within(y, run)
    valid = jnp.arange(T)[:, None] < lengths[None, :]  # (T, B)
    # cuDNN pads with zeros already; the select makes that hold for any kernel and for
    # the length-0 rows, and gives padded outputs no gradient.
    ys = jnp.where(valid[..., None], jnp.swapaxes(y, 0, 1), 0)
    empty = (lengths == 0)[:, None]
    h = jnp.where(empty, h0, h_n[0])
    c = jnp.where(empty, c0, c_n[0])
    return (h, c), ys
