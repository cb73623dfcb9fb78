"""Weights to and from PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

rnnjax cells use PyTorch's gate layout, so the mapping is a transpose:
``weight_ih_l{k}[_reverse]`` ``(G*H, E)`` -> ``w_ih`` ``(E, G*H)``, likewise
``weight_hh``; biases copy as they are. torch is imported lazily and only by
callers that pass torch objects: this module must never make torch a
dependency of rnnjax.

``nn.LSTM(proj_size=P)`` maps to the ``lstmp`` cell (:class:`rnnjax.nn.lstmp.LSTMPCell`):
``weight_hr_l{k}[_reverse]`` ``(P, H)`` -> ``w_hr`` ``(H, P)``, and ``weight_hh`` is
``(4H, P)``.

Note: PyTorch's ``batch_first`` does not matter here. rnnjax layers take
batch-major ``(B, T, E)`` inputs unless built with ``time_major=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.nn.layers import Bidirectional, Recurrent, StackedRecurrent, make_rnn

_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _spec_from_module(module) -> dict[str, Any]:
    mode = _MODES.get(getattr(module, "mode", ""), None)
    if mode is None:
        raise ValueError(f"from_torch: unsupported module {type(module).__name__}; expected "
                         f"torch.nn.RNN, nn.LSTM or nn.GRU")
    return dict(mode=mode, input_size=module.input_size, hidden_size=module.hidden_size,
                num_layers=module.num_layers, bidirectional=module.bidirectional,
                proj_size=getattr(module, "proj_size", 0))


def from_torch(
    module_or_state_dict,
    *,
    mode: str | None = None,
    rngs: nnx.Rngs | None = None,
    **cell_kwargs,
) -> StackedRecurrent:
    """Builds an rnnjax :class:`StackedRecurrent` holding a PyTorch RNN's weights.

    Args:
      module_or_state_dict: a ``torch.nn.RNN``/``LSTM``/``GRU`` module, or its
        ``state_dict()`` (a mapping of name -> tensor or array).
      mode: for a bare state_dict: ``'lstm'``, ``'gru'``, ``'rnn_tanh'`` or
        ``'rnn_relu'`` (an Elman state_dict does not record its nonlinearity).
        Inferred from a module.
      rngs: only used to build the modules before the weights are overwritten.
      **cell_kwargs: forwarded to the cells (e.g. ``dtype``).

    Returns:
      a stack with ``num_layers`` layers, each :class:`Recurrent` or
      :class:`Bidirectional` (concat merge), as PyTorch lays them out. Call it
      with ``return_carry=True`` to get per-layer final carries; PyTorch's
      ``h_n[2*k + d]`` is ``carries[k]`` (``[d]`` when bidirectional).

    ``nn.LSTM(proj_size=P)`` (or a state_dict with ``weight_hr_l*`` keys) builds
    ``lstmp`` cells with ``proj_size=P``.

    Raises:
      ValueError: for a module that is not an RNN, or an inconsistent state_dict.
    """
    if hasattr(module_or_state_dict, "state_dict"):
        spec = _spec_from_module(module_or_state_dict)
        if mode is not None and mode != spec["mode"]:
            raise ValueError(f"from_torch: mode={mode!r} disagrees with the module's "
                             f"{spec['mode']!r}")
        sd = {k: _to_numpy(v) for k, v in module_or_state_dict.state_dict().items()}
    else:
        sd = {k: _to_numpy(v) for k, v in dict(module_or_state_dict).items()}
        spec = _spec_from_state_dict(sd, mode)
    cell = spec["mode"]
    if spec.get("proj_size", 0):
        cell = "lstmp"
        cell_kwargs = {"proj_size": spec["proj_size"], **cell_kwargs}
    stack = make_rnn(cell, spec["input_size"], spec["hidden_size"],
                     num_layers=spec["num_layers"], bidirectional=spec["bidirectional"],
                     rngs=rngs or nnx.Rngs(0), **cell_kwargs)
    load_torch_state_dict(stack, sd)
    return stack


def _spec_from_state_dict(sd: Mapping[str, np.ndarray], mode: str | None) -> dict[str, Any]:
    bad = [k for k in sd if not _KEY.match(k)]
    if bad:
        raise ValueError(f"from_torch: unexpected state_dict keys {bad[:5]}; expected keys like "
                         f"'weight_ih_l0', 'bias_hh_l1_reverse'")
    if "weight_ih_l0" not in sd:
        raise ValueError("from_torch: state_dict has no 'weight_ih_l0'")
    gh, e = sd["weight_ih_l0"].shape
    proj = sd["weight_hr_l0"].shape[0] if "weight_hr_l0" in sd else 0
    # With a projection weight_hh is (4H, P); H is read from weight_hr (P, H).
    h = sd["weight_hr_l0"].shape[1] if proj else sd["weight_hh_l0"].shape[1]
    gates = gh // h
    if proj and (mode or "lstm") != "lstm":
        raise ValueError(f"from_torch: weight_hr_l0 (proj_size) exists only for nn.LSTM, "
                         f"got mode={mode!r}")
    if mode is None:
        by_gates = {4: "lstm", 3: "gru"}
        if gates not in by_gates:
            raise ValueError("from_torch: an Elman state_dict does not say its nonlinearity; "
                             "pass mode='rnn_tanh' or mode='rnn_relu'")
        mode = by_gates[gates]
    if mode not in _GATES:
        raise ValueError(f"from_torch: unknown mode {mode!r}; known: {sorted(_GATES)}")
    if _GATES[mode] != gates:
        raise ValueError(f"from_torch: mode {mode!r} has {_GATES[mode]} gates but weight_ih_l0 "
                         f"has {gates}*H rows")
    layers = 1 + max(int(_KEY.match(k).group(3)) for k in sd)
    bidirectional = any(k.endswith("_reverse") for k in sd)
    return dict(mode=mode, input_size=e, hidden_size=h, num_layers=layers,
                bidirectional=bidirectional, proj_size=proj)


def _directions(layer) -> list[tuple[Recurrent, str]]:
    if isinstance(layer, Bidirectional):
        return [(layer.forward, ""), (layer.backward, "_reverse")]
    return [(layer, "")]


def load_torch_state_dict(stack: StackedRecurrent, state_dict: Mapping[str, Any]) -> None:
    """Copies a PyTorch RNN ``state_dict`` into an existing stack, in place.

    A missing bias (``bias=False`` in torch) loads as zeros. Shapes are checked.
    """
    sd = {k: _to_numpy(v) for k, v in dict(state_dict).items()}
    used = set()
    for k, layer in enumerate(stack.layers):
        for rec, suffix in _directions(layer):
            cell = rec.cell
            names = [("w_ih", "weight_ih", True), ("w_hh", "weight_hh", True),
                     ("b_ih", "bias_ih", False), ("b_hh", "bias_hh", False)]
            if hasattr(cell, "w_hr"):
                names.append(("w_hr", "weight_hr", True))
            for ours, theirs, transpose in names:
                name = f"{theirs}_l{k}{suffix}"
                param = getattr(cell, ours)
                if name not in sd:
                    if theirs.startswith("bias"):
                        param[...] = jnp.zeros_like(param[...])
                        continue
                    raise ValueError(f"load_torch_state_dict: missing {name!r}")
                value = sd[name].T if transpose else sd[name]
                if value.shape != param[...].shape:
                    raise ValueError(f"load_torch_state_dict: {name} has shape {sd[name].shape}, "
                                     f"which does not fit {ours} {param[...].shape} (transposed)")
                param[...] = jnp.asarray(value, param[...].dtype)
                used.add(name)
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"load_torch_state_dict: keys not used by this stack: {extra[:6]}; "
                         f"check num_layers/bidirectional")


def to_torch_state_dict(stack: StackedRecurrent) -> dict[str, np.ndarray]:
    """The inverse mapping: numpy arrays keyed as PyTorch names them.

    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...})`` loads it.
    """
    out: dict[str, np.ndarray] = {}
    for k, layer in enumerate(stack.layers):
        for rec, suffix in _directions(layer):
            cell = rec.cell
            out[f"weight_ih_l{k}{suffix}"] = np.asarray(cell.w_ih[...]).T.copy()
            out[f"weight_hh_l{k}{suffix}"] = np.asarray(cell.w_hh[...]).T.copy()
            out[f"bias_ih_l{k}{suffix}"] = np.asarray(cell.b_ih[...]).copy()
            out[f"bias_hh_l{k}{suffix}"] = np.asarray(cell.b_hh[...]).copy()
            if hasattr(cell, "w_hr"):
                out[f"weight_hr_l{k}{suffix}"] = np.asarray(cell.w_hr[...]).T.copy()
    return out
