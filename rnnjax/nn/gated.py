"""The classic weight layout shared by Elman, LSTM and GRU cells, and their initialisers.

Parameters follow PyTorch/cuDNN so that weights map one to one (see
:mod:`rnnjax.interop`): ``w_ih`` ``(E, G*H)`` and ``w_hh`` ``(H, G*H)`` are
PyTorch's ``weight_ih_l0``/``weight_hh_l0`` transposed; ``b_ih`` and ``b_hh`` are
``(G*H,)``. Biases that sit outside every nonlinearity-coupled product are folded
into the projection (``b_ih + b_hh``, :meth:`GatedCell._projection_bias`), so the
time loop adds nothing it need not.

This module must never import a concrete cell, a layer, or anything above
``rnnjax.nn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn import fused, pallas_rnn
from rnnjax.nn.cell import NO_CUDNN, NO_PALLAS, RecurrentCell, check_impl
from rnnjax.nn.types import Array

Initializer = Callable[..., Array]

default_kernel_init = nnx.initializers.lecun_normal()
default_recurrent_init = nnx.initializers.orthogonal()
default_bias_init = nnx.initializers.zeros_init()


def torch_uniform(hidden_features: int) -> Initializer:
    """PyTorch's RNN initialiser: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / float(hidden_features) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def per_gate(init: Initializer, num_gates: int) -> Initializer:
    """Applies ``init`` to each ``(.., H)`` gate block of a ``(.., G*H)`` matrix.

    Why: an orthogonal ``(H, 4H)`` matrix is not orthogonal per gate; Keras and
    flax linen initialise each gate's ``(H, H)`` recurrent block orthogonally.
    """

    def wrapped(key, shape, dtype=jnp.float32):
        *lead, gh = shape
        h = gh // num_gates
        keys = jax.random.split(key, num_gates)
        return jnp.concatenate([init(k, (*lead, h), dtype) for k in keys], axis=-1)

    return wrapped


def head_mask(rows: int, num_gates: int, hidden: int, num_heads: int) -> Array:
    """``(rows, G*H)`` bool: True where a recurrent weight links a head to itself.

    Row r belongs to head ``r // (rows/N)``; column c (gate ``c // H``) to head
    ``(c % H) // (H/N)``.
    """
    head_of_row = jnp.arange(rows) // (rows // num_heads)
    head_of_col = (jnp.arange(num_gates * hidden) % hidden) // (hidden // num_heads)
    return head_of_row[:, None] == head_of_col[None, :]


def block_diagonal(init: Initializer, num_gates: int, num_heads: int) -> Initializer:
    """Initialises each head's ``(rows/N, H/N)`` block of every gate on its own (``init``,
    e.g. orthogonal), zeros elsewhere: a block-diagonal recurrent matrix per gate."""

    def wrapped(key, shape, dtype=jnp.float32):
        rows, gh = shape
        H = gh // num_gates
        hr, hc = rows // num_heads, H // num_heads
        keys = jax.random.split(key, num_gates * num_heads)
        w = jnp.zeros(shape, dtype)
        for g in range(num_gates):
            for i in range(num_heads):
                block = init(keys[g * num_heads + i], (hr, hc), dtype)
                w = w.at[i * hr:(i + 1) * hr, g * H + i * hc:g * H + (i + 1) * hc].set(block)
        return w

    return wrapped


class GatedCell(RecurrentCell):
    """A cell with PyTorch's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (see the module docstring).

    Subclasses set ``num_gates`` and ``gate_names`` (one name per ``(H, H)`` block of
    ``w_hh``) and write :meth:`step_projected` and :meth:`initialize_carry`; where
    biases fold differently, :meth:`_projection_bias`; where a fused loop exists,
    :meth:`scan_projected` and :meth:`_unfusable`.

    Args:
      impl: ``"auto"`` (fused custom-VJP paths where they apply), ``"fused"`` (insist),
        ``"scan"`` (plain autodiff: ``project_inputs`` is a plain matmul and the
        time loop a :func:`masked_scan`, so forward-mode autodiff works) or ``"pallas"``
        (the time loop as a GPU kernel, where the cell has one: ``has_pallas``).
      num_heads: N. With N > 1 the recurrence is multi-head, as sLSTM's: every gate's
        recurrent matrix is block-diagonal, N blocks of ``(H/N, H/N)`` (each initialised
        on its own), so head i's next state reads only head i's state; the input
        projection stays dense. ``w_hh`` keeps its ``(H, G*H)`` layout and is used
        through a constant block mask (its off-block entries get no gradient), so every
        path, the fused loops included, runs unchanged; the matmul costs what a dense
        one does. N = 1 is the classic cell.
      kernel_init, recurrent_kernel_init, bias_init: initialisers of ``w_ih``, each
        ``(H, H)`` gate block of ``w_hh``, and both biases.
      dtype, param_dtype: as :class:`RecurrentCell`.
    """

    num_gates: ClassVar[int] = 1
    #: Names of the ``(H, H)`` gate blocks of ``w_hh``, in order; None: ``block0``, ...
    gate_names: ClassVar[tuple[str, ...] | None] = None
    #: Whether :meth:`scan_projected` routes ``impl="pallas"`` to a kernel of
    #: :mod:`rnnjax.nn.pallas_rnn`. The kernel runs the fused loop's maths, so it applies
    #: only where the fused loop does (:meth:`_unfusable`, which subclasses extend).
    has_pallas: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        impl: str = "auto",
        num_heads: int = 1,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_init,
        bias_init: Initializer = default_bias_init,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, hidden_features, dtype=dtype, param_dtype=param_dtype)
        self.impl = check_impl(type(self).__name__, impl, unfusable=self._unfusable(),
                               no_pallas=self._no_pallas(), no_cudnn=self._no_cudnn())
        if num_heads < 1 or hidden_features % num_heads:
            raise ValueError(f"{type(self).__name__}: num_heads={num_heads} must be >= 1 and "
                             f"divide hidden_features={hidden_features}")
        self.num_heads = num_heads
        gh = self.num_gates * hidden_features
        self.w_ih = nnx.Param(kernel_init(rngs.params(), (in_features, gh), param_dtype))
        recurrent_init = per_gate(recurrent_kernel_init, self.num_gates) if num_heads == 1 \
            else block_diagonal(recurrent_kernel_init, self.num_gates, num_heads)
        self.w_hh = nnx.Param(recurrent_init(rngs.params(), (self._recurrent_rows(), gh),
                                             param_dtype))
        self.b_ih = nnx.Param(bias_init(rngs.params(), (gh,), param_dtype))
        self.b_hh = nnx.Param(bias_init(rngs.params(), (gh,), param_dtype))

    def _recurrent_rows(self) -> int:
        """Rows of ``w_hh``: the width of the state the recurrence reads (H; LSTMP's P)."""
        return self.hidden_features

    def _p(self, name: str) -> Array:
        # The multi-head recurrence is w_hh through its block mask, wherever it is read.
        w = super()._p(name)
        if name == "w_hh" and self.num_heads > 1:
            w = w * head_mask(w.shape[0], self.num_gates, self.hidden_features,
                              self.num_heads).astype(w.dtype)
        return w

    def _no_cudnn(self) -> str | None:
        """Why ``impl="cudnn"`` cannot apply to this cell (None: it can; default: no kernel)."""
        return NO_CUDNN

    def _unfusable(self) -> str | None:
        """Why the fused paths cannot apply to this cell (None: they can)."""
        compute = jnp.dtype(self.dtype or self.param_dtype)
        if compute not in fused.FUSED_DTYPES:
            return f"the fused paths run in float32 or float64, this cell computes in {compute}"
        return None

    def _no_pallas(self) -> str | None:
        """Why ``impl="pallas"`` cannot apply to this cell (None: it can)."""
        if not self.has_pallas:
            return NO_PALLAS
        return self._unfusable() or pallas_rnn.unsupported(
            self.hidden_features, self.num_gates, self.dtype or self.param_dtype)

    def _projection_bias(self) -> Array:
        """``(G*H,)``: the bias added in the projection; default ``b_ih + b_hh``."""
        return self._p("b_ih") + self._p("b_hh")

    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., G*H)``: the input matmul for any number of steps.

        Unless ``impl="scan"`` this is :func:`rnnjax.nn.fused.project`, whose
        hand-written VJP computes ``dW_ih`` without transposing the large
        ``(T*B, G*H)`` gradient (about 4x faster backward on XLA:CPU,
        ``docs/performance.md`` §4). Like every custom VJP it has no forward-mode
        rule: for ``jax.jvp``/``jacfwd``/``hessian`` build the cell with ``impl="scan"``.
        """
        self.check_features(x)
        return fused.dense_projection(self._cast(x), self._p("w_ih"), self._projection_bias(),
                                      impl=self.impl, where=type(self).__name__)

    def _fuse(self, xp: Array, w_hh: Array, carry) -> bool:
        """Whether :meth:`scan_projected` takes the cell's fused loop for these operands."""
        if self.impl == "scan":
            return False
        why = self._unfusable()
        if why is None and not fused.can_fuse(xp, w_hh, carry):
            why = (f"inputs, recurrent weight and carry need one float32/float64 dtype, got "
                   f"{jnp.dtype(xp.dtype)}, {jnp.dtype(w_hh.dtype)} and "
                   f"{[str(leaf.dtype) for leaf in jax.tree.leaves(carry)]}")
        if why is not None and self.impl == "fused":
            raise ValueError(f"{type(self).__name__}: impl='fused' cannot apply: {why}; use "
                             f"impl='auto' (fused where it applies) or impl='scan'")
        return why is None

    def recurrent_matrices(self) -> dict[str, Array]:
        """The ``(H, H)`` gate blocks of ``w_hh``, named by ``gate_names``."""
        w, H = self._p("w_hh"), self.hidden_features
        names = self.gate_names or tuple(f"block{k}" for k in range(self.num_gates))
        return {name: w[:, k * H : (k + 1) * H] for k, name in enumerate(names)}
