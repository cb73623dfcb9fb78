"""Recurrent layers: run a cell over a sequence, stack layers, run both directions.

* :class:`Recurrent` runs one cell over ``(B, T, E)`` (or time-major ``(T, B, E)``)
  inputs, with variable lengths (right padding) or a mask, reverse, an initial
  carry (given, zeros or learnable) and ``unroll``.
* :class:`Bidirectional` runs a forward and a reverse :class:`Recurrent` and merges
  them by ``concat`` or ``sum``; both directions respect each row's length.
* :class:`StackedRecurrent` stacks layers with dropout between them (never after
  the last; ``dropout_mode="standard"`` or ``"locked"``, one mask per sequence shared
  over time, Gal & Ghahramani 2016) and returns every layer's final carry.

Packed segments. Every layer takes ``resets`` ``(B, T)`` bool (``(T, B)`` if
time-major): True at the first step of each segment after the first, so that many
short sequences packed into one row run as if apart. The forward direction restarts
from the initial carry at each segment start, the reverse direction at each segment
end; outputs and final carries equal those of the segments run one by one (the final
carry is that of the row's last segment forward, first segment in reverse).
* :func:`make_rnn` builds a stack the way ``torch.nn.LSTM(...)`` is configured.

Semantics match PyTorch's packed sequences: padded outputs are zero, the final
carry is each row's carry at its own last valid step, and the reverse direction
starts at each row's last valid step. Layers never import data or training code.

The time loop. A :class:`Recurrent` layer calls its cell's ``scan_inputs`` (the cell
protocol, :mod:`rnnjax.nn.cell`): by default the hoisted input projection, then
``scan_projected``; a cell whose fast path needs the raw inputs (cuDNN's LSTM) runs
it there.

Probes. While a :class:`Probe` is active (``with probing(probe):``, read when a
layer is traced), every :class:`Recurrent` layer hands its time loop to
``probe.scan(cell, carry, xp, mask, reverse=..., unroll=...)`` instead of calling
``cell.scan_inputs``. :mod:`rnnjax.diagnostics` uses it to run the plain step loop
over the cell protocol's ``perturbed_step`` and record ``gate_activations`` in any
model, whose code never passes the probe along. Why a context and not an
argument: a model calls its layers with its own arguments; a probe is
instrumentation for one measurement, not a modelling choice a config makes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.nn.cell import RecurrentCell, make_cell
from rnnjax.nn.scan import direction_resets, lengths_to_mask
from rnnjax.nn.types import Array, Carry


class Probe:
    """Replaces the time loop of every :class:`Recurrent` layer while active (see the
    module docstring). ``scan`` must return what ``cell.scan_projected`` would:
    ``(final_carry, ys)`` with ``ys`` ``(T, B, H)``, zero where masked."""

    def scan(self, cell: RecurrentCell, carry: Carry, xp: Array, mask: Array | None, *,
             reverse: bool, unroll: int) -> tuple[Carry, Array]:
        raise NotImplementedError


_PROBE: contextvars.ContextVar[Probe | None] = contextvars.ContextVar("rnnjax_probe",
                                                                    default=None)


@contextlib.contextmanager
def probing(probe: Probe) -> Iterator[Probe]:
    """Within the block, :class:`Recurrent` layers traced or run call ``probe.scan``."""
    token = _PROBE.set(probe)
    try:
        yield probe
    finally:
        _PROBE.reset(token)


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def prepare_mask(
    x_shape: tuple[int, ...],
    *,
    seq_lengths: Array | None,
    mask: Array | None,
    time_major: bool,
    where: str,
) -> Array | None:
    """Validates lengths/mask against an input shape; returns a ``(T, B)`` mask or None.

    Raises ValueError naming the problem: both given, wrong shapes, lengths
    outside ``[1, T]`` (checked when the lengths are concrete, i.e. outside jit).
    """
    T, B = (x_shape[0], x_shape[1]) if time_major else (x_shape[1], x_shape[0])
    if seq_lengths is not None and mask is not None:
        raise ValueError(f"{where}: pass seq_lengths or mask, not both")
    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths)
        if seq_lengths.shape != (B,):
            raise ValueError(
                f"{where}: seq_lengths must have shape (B,) = ({B},), got "
                f"{tuple(seq_lengths.shape)}"
            )
        if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
            raise ValueError(f"{where}: seq_lengths must be integers, got {seq_lengths.dtype}")
        if _is_concrete(seq_lengths):
            bad = np.asarray(seq_lengths)
            lo, hi = int(bad.min()), int(bad.max())
            if lo < 1 or hi > T:
                rows = np.nonzero((bad < 1) | (bad > T))[0][:5].tolist()
                raise ValueError(
                    f"{where}: every sequence length must be in [1, T={T}], got min {lo}, max {hi} "
                    f"(rows {rows}); drop empty sequences and pad or truncate to T"
                )
        return lengths_to_mask(seq_lengths, T).T
    if mask is not None:
        mask = jnp.asarray(mask)
        want = (T, B) if time_major else (B, T)
        if mask.shape != want:
            layout = "(T, B)" if time_major else "(B, T)"
            raise ValueError(
                f"{where}: mask must have shape {layout} = {want} to match inputs of shape "
                f"{tuple(x_shape)}, got {tuple(mask.shape)}"
            )
        mask = mask.astype(bool)
        return mask if time_major else mask.T
    return None


def prepare_resets(x_shape: tuple[int, ...], resets: Array | None, *, time_major: bool,
                   where: str) -> Array | None:
    """Validates segment starts ``resets`` against an input shape; returns ``(T, B)`` or None."""
    if resets is None:
        return None
    T, B = (x_shape[0], x_shape[1]) if time_major else (x_shape[1], x_shape[0])
    resets = jnp.asarray(resets)
    want = (T, B) if time_major else (B, T)
    if resets.shape != want:
        layout = "(T, B)" if time_major else "(B, T)"
        raise ValueError(f"{where}: resets must have shape {layout} = {want} (True at each "
                         f"segment's first step) to match inputs of shape {tuple(x_shape)}, "
                         f"got {tuple(resets.shape)}")
    resets = resets.astype(bool)
    return resets if time_major else resets.T


def check_inputs(x: Array, in_features: int, time_major: bool, where: str) -> None:
    if x.ndim != 3:
        layout = "(T, B, E)" if time_major else "(B, T, E)"
        raise ValueError(f"{where}: inputs must be {layout}, got shape {tuple(x.shape)}")
    T = x.shape[0] if time_major else x.shape[1]
    if T < 1:
        raise ValueError(f"{where}: empty sequence (T=0) given; every batch needs T >= 1 steps")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"{where}: inputs have {x.shape[-1]} features in the last axis but the layer expects "
            f"E={in_features}; input shape {tuple(x.shape)}"
        )


class Recurrent(nnx.Module):
    """Runs a cell over a sequence.

    Call: ``layer(x, seq_lengths=None, mask=None, initial_carry=None, resets=None)`` with
    ``x`` ``(B, T, E)`` (``(T, B, E)`` if ``time_major``), ``seq_lengths`` ``(B,)`` int or
    ``mask`` ``(B, T)`` bool (``(T, B)`` if time-major), ``resets`` ``(B, T)`` bool, True
    at each packed segment's first step (see the module docstring). Returns ``y`` ``(B, T, H)``
    (zero at padded steps), or ``(final_carry, y)`` when ``return_carry``.

    Args:
      cell: a :class:`RecurrentCell`.
      reverse: process each sequence from its last valid step back to the first.
      time_major: inputs and outputs are ``(T, B, ...)``.
      return_carry: return ``(final_carry, y)`` instead of ``y``.
      unroll: ``jax.lax.scan`` unroll factor.
      learn_initial_carry: make the initial carry a learnable parameter (one
        ``(H,)`` vector per carry component, shared over the batch).
    """

    def __init__(
        self,
        cell: RecurrentCell,
        *,
        reverse: bool = False,
        time_major: bool = False,
        return_carry: bool = False,
        unroll: int = 1,
        learn_initial_carry: bool = False,
    ):
        self.cell = cell
        self.reverse = reverse
        self.time_major = time_major
        self.return_carry = return_carry
        self.unroll = unroll
        self.learn_initial_carry = learn_initial_carry
        if learn_initial_carry:
            self.initial_carry = nnx.Param(cell.initialize_carry(()))

    @property
    def in_features(self) -> int:
        return self.cell.in_features

    @property
    def output_features(self) -> int:
        return self.cell.output_features

    def initialize_carry(self, batch_size: int) -> Carry:
        if self.learn_initial_carry:
            return jax.tree.map(
                lambda v: jnp.broadcast_to(v, (batch_size, *v.shape)),
                self.initial_carry.get_value(),
            )
        return self.cell.initialize_carry((batch_size,))

    def __call__(
        self,
        x: Array,
        *,
        seq_lengths: Array | None = None,
        mask: Array | None = None,
        initial_carry: Carry | None = None,
        return_carry: bool | None = None,
        resets: Array | None = None,
    ):
        where = f"Recurrent({type(self.cell).__name__})"
        check_inputs(x, self.in_features, self.time_major, where)
        mask_tb = prepare_mask(x.shape, seq_lengths=seq_lengths, mask=mask,
                               time_major=self.time_major, where=where)
        resets_tb = prepare_resets(x.shape, resets, time_major=self.time_major, where=where)
        resets_tb = direction_resets(resets_tb, mask_tb, reverse=self.reverse)
        # Time-major before the projection: each step's slice of xp is then
        # contiguous (docs/performance.md §2), and lax.scan slices the leading axis.
        x_tm = x if self.time_major else jnp.swapaxes(x, 0, 1)  # (T, B, E)
        B = x_tm.shape[1]
        if initial_carry is None:
            initial_carry = self.initialize_carry(B)
        else:
            want = jax.tree.structure(self.cell.initialize_carry((B,)))
            if jax.tree.structure(initial_carry) != want:
                raise ValueError(f"{where}: initial_carry must have structure {want}, "
                                 f"got {jax.tree.structure(initial_carry)}")
            # Compare with the cell's own zero carry: not every leaf is (B, H) (the LSTMP's
            # h is (B, P); mLSTM, Mamba-2 and Gated DeltaNet carry matrix memories).
            zeros = jax.tree.leaves(jax.eval_shape(lambda: self.cell.initialize_carry((B,))))
            for leaf, ref in zip(jax.tree.leaves(initial_carry), zeros, strict=True):
                if leaf.shape != ref.shape:
                    want = ("(B, H) = " if tuple(ref.shape) == (B, self.cell.hidden_features)
                            else "cell.initialize_carry((B,)) = ") + str(tuple(ref.shape))
                    raise ValueError(f"{where}: initial_carry leaves must be {want}, got "
                                     f"{leaf.shape}")
        probe = _PROBE.get()
        # Without resets the call is the one every scan (and every probe) has always taken.
        extra = {} if resets_tb is None else {"resets": resets_tb}
        if probe is None:
            # The cell projects the inputs (one (T*B, E) x (E, G*H) matmul for all steps)
            # and runs its time loop, or runs a path that needs x itself (cuDNN's LSTM).
            carry, ys = self.cell.scan_inputs(
                initial_carry, x_tm, mask_tb, reverse=self.reverse, unroll=self.unroll,
                seq_lengths=None if seq_lengths is None else jnp.asarray(seq_lengths), **extra)
        else:
            xp = self.cell.project_inputs(x_tm)  # (T, B, G*H)
            carry, ys = probe.scan(self.cell, initial_carry, xp, mask_tb, reverse=self.reverse,
                                   unroll=self.unroll, **extra)
        y = ys if self.time_major else jnp.swapaxes(ys, 0, 1)
        rc = self.return_carry if return_carry is None else return_carry
        return (carry, y) if rc else y


class Bidirectional(nnx.Module):
    """A forward and a backward :class:`Recurrent`, merged by ``concat`` or ``sum``.

    The backward layer must have ``reverse=True``. Output ``(B, T, D*H)`` for concat
    or ``(B, T, H)`` for sum; final carry ``(forward_carry, backward_carry)``.
    """

    merges = ("concat", "sum")

    def __init__(self, forward: Recurrent, backward: Recurrent, *, merge: str = "concat",
                 return_carry: bool = False):
        if merge not in self.merges:
            raise ValueError(f"Bidirectional: unknown merge {merge!r}; known: {list(self.merges)}")
        if not backward.reverse or forward.reverse:
            raise ValueError("Bidirectional: forward must have reverse=False and backward "
                             "reverse=True")
        if forward.time_major != backward.time_major:
            raise ValueError("Bidirectional: both directions need the same time_major")
        self.forward = forward
        self.backward = backward
        self.merge = merge
        self.return_carry = return_carry

    @property
    def in_features(self) -> int:
        return self.forward.in_features

    @property
    def time_major(self) -> bool:
        return self.forward.time_major

    @property
    def output_features(self) -> int:
        h = self.forward.output_features
        return 2 * h if self.merge == "concat" else h

    def __call__(self, x, *, seq_lengths=None, mask=None, initial_carry=None,
                 return_carry=None, resets=None):
        if initial_carry is None:
            init_f, init_b = None, None
        elif isinstance(initial_carry, (tuple, list)) and len(initial_carry) == 2 \
                and not hasattr(initial_carry, "_fields"):
            init_f, init_b = initial_carry
        else:
            raise ValueError("Bidirectional: initial_carry must be a pair "
                             "(forward_carry, backward_carry), one carry per direction")
        # Each direction turns segment starts into its own restarts (the backward's at ends).
        cf, yf = self.forward(x, seq_lengths=seq_lengths, mask=mask, initial_carry=init_f,
                              return_carry=True, resets=resets)
        cb, yb = self.backward(x, seq_lengths=seq_lengths, mask=mask, initial_carry=init_b,
                               return_carry=True, resets=resets)
        y = jnp.concatenate([yf, yb], axis=-1) if self.merge == "concat" else yf + yb
        rc = self.return_carry if return_carry is None else return_carry
        return ((cf, cb), y) if rc else y


class StackedRecurrent(nnx.Module):
    """Layers applied in sequence with dropout between them (not after the last).

    Call returns ``y`` ``(B, T, H_last)``, or ``(carries, y)`` when ``return_carry``,
    where ``carries`` is a list with each layer's final carry. ``initial_carry``,
    if given, is a list with one entry per layer (None for zeros).
    Dropout is active in train mode (``model.train()``) and off after ``model.eval()``.
    ``dropout_mode="standard"`` draws a mask per element; ``"locked"`` (variational
    dropout, Gal & Ghahramani 2016) one mask per sequence and feature, shared over time.
    """

    dropout_modes = ("standard", "locked")

    def __init__(self, layers: Sequence[Recurrent | Bidirectional], *, dropout: float = 0.0,
                 dropout_mode: str = "standard", return_carry: bool = False,
                 rngs: nnx.Rngs | None = None):
        if not layers:
            raise ValueError("StackedRecurrent needs at least one layer")
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].output_features:
                raise ValueError(
                    f"StackedRecurrent: layer {i} expects {layers[i].in_features} input features "
                    f"but layer {i - 1} outputs {layers[i - 1].output_features}"
                )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"StackedRecurrent: dropout must be in [0, 1), got {dropout}")
        if dropout > 0 and rngs is None:
            raise ValueError("StackedRecurrent: dropout > 0 needs rngs=nnx.Rngs(dropout=...)")
        if dropout_mode not in self.dropout_modes:
            raise ValueError(f"StackedRecurrent: unknown dropout_mode {dropout_mode!r}; known: "
                             f"{list(self.dropout_modes)}")
        self.layers = nnx.List(layers)
        self.dropout_mode = dropout_mode
        # Locked: the mask broadcasts over the time axis, so each sequence keeps one mask.
        time_axis = 0 if layers[0].time_major else 1
        broadcast = (time_axis,) if dropout_mode == "locked" else ()
        self.dropout = (nnx.Dropout(dropout, broadcast_dims=broadcast, rngs=rngs)
                        if dropout > 0 else None)
        self.return_carry = return_carry

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def output_features(self) -> int:
        return self.layers[-1].output_features

    def __call__(self, x, *, seq_lengths=None, mask=None, initial_carry=None,
                 return_carry=None, resets=None):
        n = len(self.layers)
        if initial_carry is None:
            initial_carry = [None] * n
        elif len(initial_carry) != n:
            raise ValueError(f"StackedRecurrent: initial_carry needs {n} entries (one per "
                             f"layer), got {len(initial_carry)}")
        carries = []
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dropout is not None:
                x = self.dropout(x)
            c, x = layer(x, seq_lengths=seq_lengths, mask=mask, initial_carry=initial_carry[i],
                         return_carry=True, resets=resets)
            carries.append(c)
        rc = self.return_carry if return_carry is None else return_carry
        return (carries, x) if rc else x


def make_rnn(
    cell: str,
    in_features: int,
    hidden_features: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "concat",
    dropout: float = 0.0,
    dropout_mode: str = "standard",
    time_major: bool = False,
    unroll: int = 1,
    learn_initial_carry: bool = False,
    layer_kwargs: Sequence[Mapping[str, Any]] | None = None,
    rngs: nnx.Rngs,
    **cell_kwargs,
) -> StackedRecurrent:
    """Builds a stack like ``torch.nn.LSTM(in, hidden, num_layers, bidirectional=...)``.

    ``cell`` is a registered cell name (:func:`rnnjax.nn.cell.known_cells`: ``lstm``,
    ``gru``, ``rnn_tanh``, ...); ``cell_kwargs`` go to the cell (e.g. ``impl="scan"``).
    Returns a :class:`StackedRecurrent` whose layers are :class:`Recurrent` or
    :class:`Bidirectional`. ``dropout_mode`` (``"standard"`` or
    ``"locked"``) is :class:`StackedRecurrent`'s; a model that passes its
    ``model.cell_kwargs`` here lets a config set it there too
    (``--config.model.cell_kwargs.dropout_mode=locked``).

    ``layer_kwargs``: one dict per layer, merged over ``cell_kwargs`` for that layer's
    cell(s), for options that differ with depth (IndRNN on the adding problem initialises
    its first layer's recurrent weights in ``(0, 1)`` and its last layer's near 1:
    ``layer_kwargs=({"u_init": (0.0, 1.0)}, {})``). Like ``dropout_mode`` it can come in
    through ``model.cell_kwargs``.
    """
    if num_layers < 1:
        raise ValueError(f"make_rnn: num_layers must be >= 1, got {num_layers}")
    if layer_kwargs is None:
        layer_kwargs = [{}] * num_layers
    elif isinstance(layer_kwargs, Mapping) or len(layer_kwargs) != num_layers:
        raise ValueError(f"make_rnn: layer_kwargs needs one dict per layer ({num_layers}), got "
                         f"{layer_kwargs!r}; use {{}} for a layer that takes cell_kwargs as is")
    layers: list[Recurrent | Bidirectional] = []
    size = in_features
    for overrides in layer_kwargs:
        kw = {**cell_kwargs, **dict(overrides)}

        def one(reverse, size=size, kw=kw):
            return Recurrent(make_cell(cell, size, hidden_features, rngs=rngs, **kw),
                             reverse=reverse, time_major=time_major, unroll=unroll,
                             learn_initial_carry=learn_initial_carry)
        layer = Bidirectional(one(False), one(True), merge=merge) if bidirectional else one(False)
        layers.append(layer)
        size = layer.output_features
    return StackedRecurrent(layers, dropout=dropout, dropout_mode=dropout_mode, rngs=rngs)
