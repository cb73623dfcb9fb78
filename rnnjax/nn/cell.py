"""The cell protocol, thin like nnx's ``RNNCellBase``, and the registry of cells by name.

A cell is a pure step ``(carry, x) -> (carry, y)`` split in two, so that the
input projection is hoisted out of the time loop:

* ``project_inputs(x)``: ``(..., E) -> (..., P)``, the input work for any number
  of steps at once (one ``(T*B, E) x (E, P)`` matmul for the classic cells);
* ``step_projected(carry, xp_t)``: one step on projected inputs ``(B, P)``,
  returning ``(carry, y)`` with ``y`` ``(B, H)``;
* ``initialize_carry(batch_shape, dtype=None)``: the zero carry, leaves ``(B, H)``.

A cell must write those three. It inherits the rest, each with a documented default
that a cell overrides when the default does not fit:

* ``__call__(carry, x)`` = ``step_projected(carry, project_inputs(x))``, the step
  form that decoders call;
* ``scan_projected(carry, xp, mask, *, reverse, unroll)``: the time loop over
  time-major ``xp`` ``(T, B, P)``; default :func:`masked_scan` of ``step_projected``.
  Override it with a faster equivalent (a fused custom-VJP loop, a parallel scan)
  that gives the same numbers;
* ``scan_inputs(carry, x, mask, *, reverse, unroll, resets, seq_lengths)``: the
  sequence form from time-major raw inputs ``x`` ``(T, B, E)``, which
  :class:`rnnjax.nn.layers.Recurrent` calls; default
  ``scan_projected(carry, project_inputs(x), ...)``. A cell overrides it only for a
  path that must see ``x`` itself (cuDNN's LSTM does its own input projection,
  :mod:`rnnjax.nn.cudnn_rnn`), and returns the default where that path cannot run.
  ``seq_lengths`` ``(B,)``, when the layer has them, are the lengths ``mask`` was
  built from (so ``mask`` is a prefix mask even when traced);
* the diagnostics hooks, which :mod:`rnnjax.diagnostics` uses and nothing else:

  - ``state_width``: the width ``S`` of the state that gradient-through-time is
    measured on (default ``hidden_features``);
  - ``perturbed_step(carry, xp_t, eps)``: one step with ``eps`` ``(B, S)`` added to
    the recurrent state that flows to the next step and to this step's output.
    The default handles a carry that is an array or a NamedTuple with a field
    ``h``; a cell whose state is elsewhere (the LRU's complex state) overrides it;
  - ``gate_activations(carry, xp_t)``: ``{gate: ("sigmoid" | "tanh", (B, H))}``
    for gate saturation (default ``{}``);
  - ``recurrent_matrices()``: ``{name: (S, S) matrix}`` whose spectral radius
    diagnostics reports (default ``{}``).

  How diagnostics runs them: every :class:`rnnjax.nn.layers.Recurrent` layer calls
  ``cell.scan_projected`` unless a probe is active (``rnnjax.nn.layers.probing``,
  a context that diagnostics owns). Under a probe the layer hands its cell and the
  projected inputs to the probe, and diagnostics runs the plain step loop,
  :func:`masked_scan` over ``perturbed_step``, recording ``gate_activations``. So a
  cell's fast ``scan_projected`` is never patched, and a new cell family is measured
  with no code outside its own file.

Dtypes (Flax's names; the policy ``model.dtype`` sets, ``docs/performance.md`` §17):
``param_dtype`` is the parameters' dtype (float32); ``dtype`` the compute dtype (None:
the parameters' own, float32, which is the default and what every cell computed before
there was a policy). With ``dtype=jnp.bfloat16`` the projections, the matmuls and the
gate maths take bfloat16 inputs, and the carry stays float32 (:attr:`carry_dtype`, what
``initialize_carry`` returns): a carry is cast to ``dtype`` where it feeds a matmul
(:meth:`_cast`) and the update that makes the next carry runs in float32 (a float32
carry times a bfloat16 gate promotes to float32; :meth:`_keep` casts a new carry back
where its maths did not). Outputs ``y`` are in the compute dtype; sums, normalisers,
stabilisers and cumulative log-gates are float32 (each family's docstring says where).

The time-loop implementation, where a cell has more than one, is a cell argument
``impl: "auto" | "fused" | "scan" | "pallas" | "cudnn"`` (see :data:`IMPLS`), settable
from a config through ``model.cell_kwargs.impl``. ``impl="scan"`` uses no custom VJP
anywhere in the cell, so ``jax.jvp`` / ``jax.jacfwd`` / ``jax.hessian`` work through it.
``impl="pallas"`` is a GPU kernel (:mod:`rnnjax.nn.pallas_rnn`) that only the cells
with one accept; ``"auto"`` never picks it. ``impl="cudnn"`` is NVIDIA cuDNN's LSTM
(:mod:`rnnjax.nn.cudnn_rnn`), which only the plain LSTM accepts; ``"auto"`` takes it on
a CUDA GPU where it can run. Every other cell rejects either with a ValueError saying why.

Registration: a cell family is one file in ``rnnjax/nn/`` that calls
:func:`register_cell`. The registry imports every module of the ``rnnjax.nn``
package once, before its first lookup or listing, so no other file changes.

This module must never import a concrete cell, a layer, or anything above
``rnnjax.nn``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array, Carry

#: The values of a cell's ``impl`` argument: ``"auto"`` uses the fastest path that
#: applies (the fused custom-VJP paths; cuDNN for the LSTM on a CUDA GPU), ``"fused"``
#: insists on the fused paths (a ValueError where they cannot apply), ``"scan"`` uses
#: plain autodiff everywhere (forward mode works), ``"pallas"`` the time loop as a Pallas
#: GPU kernel (:mod:`rnnjax.nn.pallas_rnn`; only cells that have one; interpreted off a
#: GPU, for testing there), ``"cudnn"`` NVIDIA cuDNN's LSTM kernel
#: (:mod:`rnnjax.nn.cudnn_rnn`; the plain LSTM on a CUDA GPU only).
IMPLS = ("auto", "fused", "scan", "pallas", "cudnn")

#: Why a cell that says nothing about Pallas rejects ``impl="pallas"``.
NO_PALLAS = "this cell has no Pallas kernel (LSTMCell and GRUCell have one)"
#: Why a cell that says nothing about cuDNN rejects ``impl="cudnn"``.
NO_CUDNN = ("cuDNN's kernel (jax.experimental.rnn) computes only the plain LSTM "
            "(cell 'lstm', LSTMCell)")


def check_impl(owner: str, impl: str, *, unfusable: str | None = None,
               no_pallas: str | None = NO_PALLAS, no_cudnn: str | None = NO_CUDNN) -> str:
    """Validates a cell's ``impl`` argument; ``unfusable`` says why "fused" cannot apply,
    ``no_pallas`` why "pallas" cannot and ``no_cudnn`` why "cudnn" cannot (None: it can;
    the defaults: the cell has no such kernel)."""
    if impl not in IMPLS:
        close = difflib.get_close_matches(str(impl), IMPLS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{owner}: unknown impl {impl!r}; known: {list(IMPLS)}{hint}")
    if impl == "fused" and unfusable:
        raise ValueError(f"{owner}: impl='fused' cannot apply: {unfusable}; use impl='auto' "
                         f"(fused where it applies) or impl='scan'")
    if impl == "pallas" and no_pallas:
        raise ValueError(f"{owner}: impl='pallas' cannot apply: {no_pallas}; use impl='auto' "
                         f"(fused where it applies) or impl='scan'")
    if impl == "cudnn" and no_cudnn:
        raise ValueError(f"{owner}: impl='cudnn' cannot apply: {no_cudnn}; use impl='auto' "
                         f"(cuDNN or fused where they apply) or impl='scan'")
    return impl


class RecurrentCell(nnx.Module):
    """The cell protocol (see the module docstring). Creates no weights.

    Args:
      in_features: E, the width of ``x``.
      hidden_features: H, the width of ``h`` and of the output ``y``.
      dtype: the compute dtype (None: the parameters' own); see "Dtypes" in the module
        docstring.
      param_dtype: the parameters' dtype.
    """

    def __init__(self, in_features: int, hidden_features: int, *, dtype=None,
                 param_dtype=jnp.float32):
        if in_features < 1 or hidden_features < 1:
            raise ValueError(
                f"{type(self).__name__}: in_features and hidden_features must be >= 1, "
                f"got {in_features} and {hidden_features}"
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.param_dtype = param_dtype

    # -- helpers -------------------------------------------------------------
    @property
    def output_features(self) -> int:
        return self.hidden_features

    def _cast(self, a: Array) -> Array:
        return a if self.dtype is None else a.astype(self.dtype)

    def _p(self, name: str) -> Array:
        return self._cast(getattr(self, name)[...])

    @property
    def carry_dtype(self):
        """The carry's dtype: the compute dtype, at least float32 (float32 under a
        bfloat16 policy; float64 for a float64 cell), so that no step's update rounds
        the state that every later step reads."""
        return jnp.promote_types(self.dtype or self.param_dtype, jnp.float32)

    @staticmethod
    def _keep(new: Carry, old: Carry) -> Carry:
        """``new`` cast leaf by leaf to ``old``'s dtypes: a step's carry keeps the dtype
        it came in (a no-op when the maths already gave it)."""
        return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)

    def _zeros(self, batch_shape, dtype) -> Array:
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        dtype = dtype or self.carry_dtype
        return jnp.zeros((*batch_shape, self.hidden_features), dtype)

    def check_features(self, x: Array) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects inputs with {self.in_features} features in the "
                f"last axis, got shape {tuple(x.shape)}; check the embedding/input size or the "
                f"cell's in_features"
            )

    # -- what a cell must write ----------------------------------------------
    def project_inputs(self, x: Array) -> Array:
        """``(..., E) -> (..., P)``: the hoisted input projection, for any number of steps."""
        raise NotImplementedError(f"{type(self).__name__} must define project_inputs")

    def step_projected(self, carry: Carry, xp_t: Array) -> tuple[Carry, Array]:
        """One step on projected inputs ``xp_t`` ``(B, P)``; returns ``(carry, y)``."""
        raise NotImplementedError(f"{type(self).__name__} must define step_projected")

    def initialize_carry(self, batch_shape: tuple[int, ...] | int, dtype=None) -> Carry:
        """The zero carry for ``batch_shape``; leaves ``(*batch_shape, H)`` in ``dtype``
        (None: :attr:`carry_dtype`, float32 under a bfloat16 policy)."""
        raise NotImplementedError(f"{type(self).__name__} must define initialize_carry")

    # -- inherited -----------------------------------------------------------
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
        resets: Array | None = None,
    ) -> tuple[Carry, Array]:
        """Runs the recurrence over time-major projected inputs ``xp`` ``(T, B, P)``.

        ``mask`` is ``(T, B)`` bool or None. ``resets`` is ``(T, B)`` bool or None: True
        where the carry restarts from ``carry`` before the step (in processing order;
        :mod:`rnnjax.nn.scan`'s reset convention), so that packed segments run as if
        apart. Returns ``(final_carry, ys)`` with ``ys`` ``(T, B, H)``, zero where masked
        (:func:`masked_scan` semantics). Subclasses may replace this with a faster
        equivalent (a custom VJP, a parallel scan); it must give the same numbers.
        """
        return masked_scan(self.step_projected, carry, xp, mask, reverse=reverse, unroll=unroll,
                           resets=resets)

    def scan_inputs(
        self,
        carry: Carry,
        x: Array,
        mask: Array | None = None,
        *,
        reverse: bool = False,
        unroll: int = 1,
        resets: Array | None = None,
        seq_lengths: Array | None = None,
    ) -> tuple[Carry, Array]:
        """The sequence form from time-major inputs ``x`` ``(T, B, E)``: what a layer calls.

        ``mask``, ``resets``, ``reverse`` and ``unroll`` as :meth:`scan_projected`;
        ``seq_lengths`` ``(B,)`` int or None: when given, ``mask`` is the prefix mask of
        these lengths. Default: :meth:`scan_projected` of :meth:`project_inputs` (the
        hoisted projection, then the time loop), which ignores ``seq_lengths``. Override
        only for a path that needs ``x`` itself; it must give the same numbers.
        """
        extra = {} if resets is None else {"resets": resets}
        return self.scan_projected(carry, self.project_inputs(x), mask, reverse=reverse,
                                   unroll=unroll, **extra)

    # -- diagnostics hooks ---------------------------------------------------
    @property
    def state_width(self) -> int:
        """``S``: the width of the state that gradient-through-time is measured on."""
        return self.hidden_features

    def perturbed_step(self, carry: Carry, xp_t: Array, eps: Array) -> tuple[Carry, Array]:
        """One step with ``eps`` ``(B, S)`` added to the recurrent state that flows to the next
        step and to this step's output; with ``eps = 0`` it is :meth:`step_projected`.

        Default: the state is the carry itself (an array) or its field ``h`` (a
        NamedTuple such as :class:`LSTMState`), and the output is that state.
        """
        carry, y = self.step_projected(carry, xp_t)
        if hasattr(carry, "shape"):
            return carry + eps, y + eps
        if hasattr(carry, "_replace") and hasattr(carry, "h"):
            return carry._replace(h=carry.h + eps), y + eps
        raise ValueError(
            f"{type(self).__name__}: the default perturbed_step needs a carry that is an array "
            f"or a NamedTuple with a field h, got {type(carry).__name__}; override "
            f"perturbed_step (and state_width) to say where the state is"
        )

    def gate_activations(self, carry: Carry, xp_t: Array) -> dict[str, tuple[str, Array]]:
        """``{gate: ("sigmoid" | "tanh", (B, H))}`` for the step from ``carry`` on ``xp_t``."""
        return {}

    def recurrent_matrices(self) -> dict[str, Array]:
        """``{name: square matrix}`` whose spectral radius diagnostics reports."""
        return {}


# ---------------------------------------------------------------------------
# The registry: config names -> cell constructors.
# ---------------------------------------------------------------------------
#: Config names -> ``(cell class, fixed keyword arguments)``. Filled by
#: :func:`register_cell` calls in the cell modules; read through :func:`make_cell`.
CELLS: dict[str, tuple[type[RecurrentCell], dict]] = {}
_discovered = False


def _discover() -> None:
    """Imports every module of ``rnnjax.nn`` once, so that each registers its cells.

    Why: a new cell family is one new file that calls :func:`register_cell`; nothing
    else has to import it for configs to find it.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        importlib.import_module(f"{__package__}.{info.name}")


def register_cell(name: str, cls: type[RecurrentCell], **fixed_kwargs) -> None:
    """Adds a cell under ``name`` so configs can select it (``model.cell=name``)."""
    if not (isinstance(cls, type) and issubclass(cls, RecurrentCell)):
        raise TypeError(f"register_cell({name!r}): {cls!r} is not a RecurrentCell subclass")
    CELLS[name] = (cls, fixed_kwargs)


def known_cells() -> list[str]:
    """The registered cell names, sorted."""
    _discover()
    return sorted(CELLS)


def make_cell(name: str, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
              **kwargs) -> RecurrentCell:
    """Builds a cell by config name; an unknown name lists the known ones, an unknown
    option lists the cell's options."""
    _discover()
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; known cells: {sorted(CELLS)}")
    cls, fixed = CELLS[name]
    unknown = sorted(set(kwargs) - cell_options(cls))
    if unknown:
        raise ValueError(f"cell {name!r} takes no option {unknown} (model.cell_kwargs); its "
                         f"options: {sorted(cell_options(cls) - set(fixed))}")
    if _takes_rngs(cls):
        kwargs = {**kwargs, "rngs": rngs}
    return cls(in_features, hidden_features, **{**fixed, **kwargs})


def _init_params(cls: type[RecurrentCell]):
    """The parameters of ``cls``'s ``__init__`` chain, followed through ``**kwargs``."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        yield from params
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return


def _takes_rngs(cls: type[RecurrentCell]) -> bool:
    # A cell whose weights need no randomness may leave rngs out of its __init__.
    return any(p.name == "rngs" for p in _init_params(cls))


def cell_options(cls: type[RecurrentCell]) -> set[str]:
    """The keyword options a cell class accepts (its own and, through ``**kwargs``, its
    bases'), without ``in_features``, ``hidden_features`` and ``rngs``."""
    _discover()
    return {p.name for p in _init_params(cls) if p.kind is p.KEYWORD_ONLY} - {"rngs"}
