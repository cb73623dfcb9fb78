"""Recurrent cells: Elman (tanh/relu), LSTM and GRU as Flax NNX modules.

Every cell offers two equivalent forms:

* the **step form** ``cell(carry, x) -> (carry, y)`` with ``x`` ``(B, E)``: a pure
  function of its inputs and the cell's parameters, what decoders call;
* the **split form** for sequences: ``xp = cell.project_inputs(x)`` applies the
  input matmul to all time steps at once (one ``(T*B, E) x (E, G*H)`` matmul),
  then ``cell.scan_projected(carry, xp, mask)`` runs only the hidden matmul
  inside ``jax.lax.scan``. ``cell(carry, x)`` is literally
  ``cell.step_projected(carry, cell.project_inputs(x))``, so the two forms
  compute the same thing.

Parameters follow PyTorch/cuDNN so that weights map one to one (see
:mod:`rnnjax.interop`): ``w_ih`` ``(E, G*H)`` and ``w_hh`` ``(H, G*H)`` are
PyTorch's ``weight_ih_l0``/``weight_hh_l0`` transposed; ``b_ih`` and ``b_hh`` are
``(G*H,)``. Gate order: LSTM ``i, f, g, o``; GRU ``r, z, n`` with the reset gate
applied after the hidden matmul (``reset_before=False``, cuDNN), or before it
(``reset_before=True``, Cho et al. 2014).

Biases that sit outside every nonlinearity-coupled product are folded into the
projection (``b_ih + b_hh``), so the scan body adds nothing it need not. Cells
never import layers, data or training code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array, Carry, LSTMState

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


class RecurrentCell(nnx.Module):
    """Base class: parameters, dtype handling, projection and the default scan.

    Subclasses set ``num_gates`` and implement :meth:`step_projected`,
    :meth:`initialize_carry` and, where biases fold differently,
    :meth:`_projection_bias`.
    """

    num_gates: ClassVar[int] = 1

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_init,
        bias_init: Initializer = default_bias_init,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_features < 1 or hidden_features < 1:
            raise ValueError(
                f"{type(self).__name__}: in_features and hidden_features must be >= 1, "
                f"got {in_features} and {hidden_features}"
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype
        gh = self.num_gates * hidden_features
        self.w_ih = nnx.Param(kernel_init(rngs.params(), (in_features, gh), param_dtype))
        self.w_hh = nnx.Param(
            per_gate(recurrent_kernel_init, self.num_gates)(
                rngs.params(), (hidden_features, gh), param_dtype
            )
        )
        self.b_ih = nnx.Param(bias_init(rngs.params(), (gh,), param_dtype))
        self.b_hh = nnx.Param(bias_init(rngs.params(), (gh,), param_dtype))

    # -- helpers -------------------------------------------------------------
    @property
    def output_features(self) -> int:
        return self.hidden_features

    def _cast(self, a: Array) -> Array:
        return a if self.dtype is None else a.astype(self.dtype)

    def _p(self, name: str) -> Array:
        return self._cast(getattr(self, name)[...])

    def _projection_bias(self) -> Array:
        """``(G*H,)``: the bias added in the projection; default ``b_ih + b_hh``."""
        return self._p("b_ih") + self._p("b_hh")

    def check_features(self, x: Array) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects inputs with {self.in_features} features in the "
                f"last axis, got shape {tuple(x.shape)}; check the embedding/input size or the "
                f"cell's in_features"
            )

    # -- the two forms -------------------------------------------------------
    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., G*H)``: the input matmul for any number of steps.

        By default this is :func:`rnnjax.nn.fused.project`, whose hand-written VJP
        computes ``dW_ih`` without transposing the large ``(T*B, G*H)`` gradient
        (about 4x faster backward on XLA:CPU). Like every custom VJP it has no
        forward-mode rule: wrap ``jax.jvp``/``jacfwd``/``hessian`` through a
        recurrent layer in ``with rnnjax.nn.fused.disabled():``.
        """
        self.check_features(x)
        from rnnjax.nn import fused  # local: fused must stay below cells

        x, w, b = self._cast(x), self._p("w_ih"), self._projection_bias()
        if fused.can_project(x, w):
            return fused.project(x, w, b)
        return x @ w + b

    def step_projected(self, carry: Carry, xp: Array) -> tuple[Carry, Array]:
        """One step given projected inputs ``xp`` ``(B, G*H)``; returns ``(carry, y)``."""
        raise NotImplementedError

    def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """The step form: ``x`` ``(B, E)`` -> ``(carry, y)`` with ``y`` ``(B, H)``."""
        return self.step_projected(carry, self.project_inputs(x))

    def scan_projected(
        self,
        carry: Carry,
        xp: Array,
        mask: Array | None = None,
        *,
        reverse: bool = False,
        unroll: int = 1,
    ) -> tuple[Carry, Array]:
        """Runs the recurrence over time-major projected inputs ``xp`` ``(T, B, G*H)``.

        ``mask`` is ``(T, B)`` bool or None. Returns ``(final_carry, ys)`` with ``ys``
        ``(T, B, H)``, zero where masked. Subclasses may replace this with a faster
        equivalent (a custom VJP, a parallel scan); it must give the same numbers.
        """
        return masked_scan(self.step_projected, carry, xp, mask, reverse=reverse, unroll=unroll)

    def initialize_carry(self, batch_shape: tuple[int, ...] | int, dtype=None) -> Carry:
        raise NotImplementedError

    def _zeros(self, batch_shape, dtype) -> Array:
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        dtype = dtype or self.dtype or self.param_dtype
        return jnp.zeros((*batch_shape, self.hidden_features), dtype)


class ElmanCell(RecurrentCell):
    """Elman RNN: ``h' = act(x W_ih + b_ih + h W_hh + b_hh)``, act tanh or relu.

    Carry and output: ``h`` ``(B, H)``. Matches ``torch.nn.RNN(nonlinearity=...)``.
    """

    num_gates = 1
    activations: ClassVar[dict[str, Callable]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}

    def __init__(self, in_features: int, hidden_features: int, *, activation: str = "tanh",
                 **kwargs):
        if activation not in self.activations:
            raise ValueError(
                f"ElmanCell: unknown activation {activation!r}; known: {sorted(self.activations)}"
            )
        self.activation = activation
        super().__init__(in_features, hidden_features, **kwargs)

    def step_projected(self, carry, xp):
        h = self.activations[self.activation](xp + carry @ self._p("w_hh"))
        return h, h

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


class LSTMCell(RecurrentCell):
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch layout.

    ``i, f, g, o = split(x W_ih + b_ih + h W_hh + b_hh)``;
    ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(c')``.
    Carry: :class:`LSTMState` ``(h, c)``, each ``(B, H)``; output ``h`` ``(B, H)``.

    ``forget_bias`` (default 1.0, Jozefowicz et al. 2015) is added to the forget
    slice of ``b_hh`` at initialisation only.
    """

    num_gates = 4

    def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0,
                 **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        self.forget_bias = forget_bias
        h = hidden_features
        self.b_hh[...] = self.b_hh[...].at[h : 2 * h].add(forget_bias)

    def step_projected(self, carry, xp):
        h, c = carry
        H = self.hidden_features
        gates = xp + h @ self._p("w_hh")  # (B, 4H)
        # Why whole-matrix activation: XLA:CPU fuses elementwise ops over column
        # slices poorly (PERF_NOTES 1); one sigmoid over (B, 4H) then slices is faster.
        s = jax.nn.sigmoid(gates)
        i, f, o = s[:, :H], s[:, H : 2 * H], s[:, 3 * H :]
        g = jnp.tanh(gates[:, 2 * H : 3 * H])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return LSTMState(h, c), h

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1):
        # Why: the fused loop (rnnjax.nn.fused) has a hand-written VJP that trains
        # faster on XLA:CPU; it falls back to the plain scan for other dtypes.
        from rnnjax.nn import fused  # here, so that this method is the whole hook

        w_hh = self._p("w_hh")
        if fused.can_fuse(xp, w_hh, carry):
            return fused.lstm_scan(w_hh, xp, carry, mask, reverse=reverse, unroll=unroll)
        return super().scan_projected(carry, xp, mask, reverse=reverse, unroll=unroll)

    def initialize_carry(self, batch_shape, dtype=None):
        z = self._zeros(batch_shape, dtype)
        return LSTMState(z, z)


class GRUCell(RecurrentCell):
    """GRU (Cho et al. 2014), PyTorch/cuDNN layout, gates ``r, z, n``.

    ``reset_before=False`` (default, PyTorch/cuDNN)::

        r = σ(x W_ir + b_ir + h W_hr + b_hr);  z = σ(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn));  h' = (1 - z) n + z h

    ``reset_before=True`` (Cho et al. 2014): ``n = tanh(x W_in + b_in + (r*h) W_hn + b_hn)``.
    Carry and output: ``h`` ``(B, H)``.
    """

    num_gates = 3

    def __init__(self, in_features: int, hidden_features: int, *, reset_before: bool = False,
                 **kwargs):
        self.reset_before = reset_before
        super().__init__(in_features, hidden_features, **kwargs)

    def _projection_bias(self):
        # b_hn multiplies into r*(...) in the cuDNN form, so only b_hr, b_hz fold.
        H = self.hidden_features
        b_hh = self._p("b_hh")
        if self.reset_before:
            return self._p("b_ih") + b_hh
        return self._p("b_ih") + jnp.concatenate([b_hh[: 2 * H], jnp.zeros_like(b_hh[2 * H :])])

    def step_projected(self, carry, xp):
        h = carry
        H = self.hidden_features
        w_hh = self._p("w_hh")
        if self.reset_before:
            rz = jax.nn.sigmoid(xp[:, : 2 * H] + h @ w_hh[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            n = jnp.tanh(xp[:, 2 * H :] + (r * h) @ w_hh[:, 2 * H :])
        else:
            hh = h @ w_hh  # (B, 3H)
            rz = jax.nn.sigmoid(xp[:, : 2 * H] + hh[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            n = jnp.tanh(xp[:, 2 * H :] + r * (hh[:, 2 * H :] + self._p("b_hh")[2 * H :]))
        h = n + z * (h - n)  # == (1 - z) n + z h
        return h, h

    def scan_projected(self, carry, xp, mask=None, *, reverse=False, unroll=1):
        # Why: as LSTMCell.scan_projected; only the cuDNN form (reset_before=False) is fused.
        from rnnjax.nn import fused  # here, so that this method is the whole hook

        w_hh = self._p("w_hh")
        if not self.reset_before and fused.can_fuse(xp, w_hh, carry):
            H = self.hidden_features
            return fused.gru_scan(w_hh, self._p("b_hh")[2 * H :], xp, carry, mask,
                                  reverse=reverse, unroll=unroll)
        return super().scan_projected(carry, xp, mask, reverse=reverse, unroll=unroll)

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


#: Config names -> cell constructors (with fixed keyword arguments).
CELLS: dict[str, tuple[type[RecurrentCell], dict]] = {
    "elman": (ElmanCell, {"activation": "tanh"}),
    "rnn_tanh": (ElmanCell, {"activation": "tanh"}),
    "rnn_relu": (ElmanCell, {"activation": "relu"}),
    "lstm": (LSTMCell, {}),
    "gru": (GRUCell, {}),
}


def register_cell(name: str, cls: type[RecurrentCell], **fixed_kwargs) -> None:
    """Adds a cell under ``name`` so configs can select it."""
    CELLS[name] = (cls, fixed_kwargs)


def make_cell(name: str, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
              **kwargs) -> RecurrentCell:
    """Builds a cell by config name; an unknown name lists the known ones."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; known cells: {sorted(CELLS)}")
    cls, fixed = CELLS[name]
    unknown = sorted(set(kwargs) - cell_options(cls))
    if unknown:
        raise ValueError(f"cell {name!r} takes no option {unknown} (model.cell_kwargs); its "
                         f"options: {sorted(cell_options(cls) - set(fixed))}")
    return cls(in_features, hidden_features, rngs=rngs, **{**fixed, **kwargs})


def cell_options(cls: type[RecurrentCell]) -> set[str]:
    """The keyword options a cell class accepts (its own and, through ``**kwargs``, its
    bases'), without ``in_features``, ``hidden_features`` and ``rngs``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"rngs"}
