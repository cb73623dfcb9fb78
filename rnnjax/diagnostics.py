"""Gradient-flow diagnostics for recurrent models: why a run does or does not learn.

Three measurements on one batch:

* **gradient through time**: ``‖∂L/∂h_t‖`` for every recurrent layer and every
  step ``t`` (for the LRU, ``h_t`` is its complex state ``s_t``, real and imaginary
  parts, whose perturbation also reaches the output ``y_t`` read from it). Each
  cell's time loop is rerun as ``h_t = step(h_{t-1}, x_t) + ε_t``
  with ``ε = 0`` and the loss is differentiated with respect to ``ε`` (that
  derivative *is* ``∂L/∂h_t``, through every later step and every output that
  reads ``h_t``). A vanishing gradient shows as a norm that falls geometrically
  with the distance from the loss (Bengio et al. 1994; Pascanu et al. 2013);
* **gate saturation**: the fraction of gate activations that are saturated,
  per gate: sigmoid gates below 0.05 or above 0.95, tanh activations (LSTM
  ``g``, GRU ``n``, a tanh Elman ``h``) beyond ±0.95. Padded steps are left out;
* **spectral radius** of each matrix of ``cell.recurrent_matrices()``: per gate
  block ``(H, H)`` of ``w_hh`` (an Elman cell has one block, ``h``; min cells have
  none); for the LRU, whose recurrent matrix is ``diag(λ)``, ``max |λ|`` (key ``lambda``).

Everything goes through the cell protocol (:mod:`rnnjax.nn.cell`): ``state_width``,
``perturbed_step``, ``gate_activations`` and ``recurrent_matrices``; this module has
no per-class code. Every cell run by a :class:`rnnjax.nn.Recurrent` layer is covered
(the layer hands its time loop to the probe of :func:`rnnjax.nn.layers.probing`); a
cell called step by step by a decoder is not. The probe runs the plain step loop: the
fused LSTM/GRU loops compute the same function, so the numbers are those of the model.

``diagnose_workdir`` (``rnnjax diagnose --workdir runs/x``) writes
``workdir/diagnostics.json`` and ``workdir/plots/grad_flow.png``;
``training_diagnostics`` gives the flat scalars a trainer logs every
``train.diagnostics_every`` steps. This module never imports the trainer at
import time and never changes a model's parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.inference import load_for_inference
from rnnjax.nn.cell import RecurrentCell
from rnnjax.nn.layers import Probe, probing
from rnnjax.nn.scan import masked_scan
from rnnjax.nn.types import Array
from rnnjax.train.hooks import Hook
from rnnjax.train.workdir import Workdir

SIGMOID_LOW, SIGMOID_HIGH = 0.05, 0.95
TANH_LIMIT = 0.95


# ---------------------------------------------------------------------------
# Which cells, which gates.
# ---------------------------------------------------------------------------
def recurrent_cells(model: nnx.Module) -> list[tuple[str, RecurrentCell]]:
    """``[(name, cell)]`` for every recurrent cell in ``model``, in graph order.

    Names are the module path without ``layers``/``cell``: ``encoder.0``,
    ``encoder.1.fwd``, ``encoder.1.bwd``.
    """
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, RecurrentCell):
            parts = [{"forward": "fwd", "backward": "bwd"}.get(str(p), str(p)) for p in path
                     if p not in ("layers", "cell")]
            out.append((".".join(parts) or "cell", node))
    return sorted(out, key=lambda nc: _natural(nc[0]))


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


class _GradProbe(Probe):
    """Runs each layer's cell as the plain step loop with ``ε_t`` added to its state.

    Every :class:`rnnjax.nn.Recurrent` layer traced inside ``probing(probe)`` calls
    :meth:`scan` instead of ``cell.scan_projected`` (the cell protocol's diagnostics
    hook): ``masked_scan`` over ``cell.perturbed_step`` with ``eps[name]`` ``(T, B, S)``
    (zeros when not given), recording ``cell.gate_activations`` along the way. The
    fused LSTM/GRU loops compute the same function as the step loop, so the numbers
    are those of the model. ``record[name]`` receives ``{"shape": (T, B, S), "mask":
    (T, B) | None, "cell": class name, "gates": {gate: (kind, (T, B, H))}}``. A cell
    called twice gets ``name#2``.
    """

    def __init__(self, model: nnx.Module, eps: dict[str, Array] | None = None):
        self.names = {id(cell): name for name, cell in recurrent_cells(model)}
        self.eps = eps or {}
        self.record: dict[str, dict] = {}
        self.calls: dict[str, int] = {}

    def scan(self, cell, carry, xp, mask, *, reverse, unroll):
        name = self.names.get(id(cell), type(cell).__name__)
        self.calls[name] = self.calls.get(name, 0) + 1
        key = name if self.calls[name] == 1 else f"{name}#{self.calls[name]}"
        T, B = xp.shape[:2]
        S = cell.state_width
        e = self.eps.get(key)
        if e is None:
            e = jnp.zeros((T, B, S), xp.dtype)

        def step(c, inp):
            xp_t, e_t = inp
            gates = cell.gate_activations(c, xp_t)
            new_c, y = cell.perturbed_step(c, xp_t, e_t)
            return new_c, (y, {k: a for k, (_, a) in gates.items()})

        final, (ys, gates) = masked_scan(step, carry, (xp, e), mask, reverse=reverse,
                                         unroll=unroll)
        # The kinds are static strings: read them from one step outside the loop (its
        # arrays are dead code that XLA drops).
        kinds = {k: kind for k, (kind, _) in cell.gate_activations(carry, xp[0]).items()}
        self.record[key] = {"shape": (T, B, S), "mask": mask, "cell": type(cell).__name__,
                            "gates": {k: (kinds[k], v) for k, v in gates.items()}}
        return final, ys


# ---------------------------------------------------------------------------
# The three measurements.
# ---------------------------------------------------------------------------
def hidden_grads(model: nnx.Module, loss_fn: Callable[[nnx.Module], Array]
                 ) -> tuple[Array, dict[str, Array], dict[str, dict]]:
    """``(loss, {cell: ∂L/∂h (T, B, H)}, record)`` for ``loss_fn(model)`` (a scalar).

    ``record[cell]`` holds ``shape``, ``cell`` (class name), ``mask`` ``(T, B)`` or
    None, and ``gates`` ``{gate: (kind, (T, B, H))}``.
    """
    def perturbed(eps):
        probe = _GradProbe(model, eps)
        with probing(probe):
            loss = loss_fn(model)
        arrays = {k: {"mask": r["mask"], "gates": {g: a for g, (_, a) in r["gates"].items()}}
                  for k, r in probe.record.items()}
        return loss, arrays

    shapes = _GradProbe(model)
    with probing(shapes):
        jax.eval_shape(lambda: loss_fn(model))  # finds the cells and their (T, B, S)
    static = shapes.record
    if not static:
        raise ValueError("diagnostics: the model ran no recurrent cell through a Recurrent "
                         "layer's time loop; nothing to measure")
    zeros = {k: jnp.zeros(r["shape"], jnp.float32) for k, r in static.items()}
    # jit: eager dispatch of a scan's backward pass is slow. The model's arrays are
    # closed over (constants of this one call), only eps is an argument.
    (loss, arrays), grads = jax.jit(jax.value_and_grad(perturbed, has_aux=True))(zeros)
    record = {k: {"shape": r["shape"], "cell": r["cell"], "mask": arrays[k]["mask"],
                  "gates": {g: (kind, arrays[k]["gates"][g])
                            for g, (kind, _) in r["gates"].items()}}
              for k, r in static.items()}
    return loss, grads, record


def grad_norms_over_time(grads: dict[str, Array], record: dict[str, dict]
                         ) -> dict[str, np.ndarray]:
    """``{cell: (T,)}``: mean over the batch of ``‖∂L/∂h_t‖₂``, padded steps left out."""
    out = {}
    for k, g in grads.items():
        norms = np.linalg.norm(np.asarray(g, np.float64), axis=-1)  # (T, B)
        mask = record[k]["mask"]
        w = np.ones_like(norms) if mask is None else np.asarray(mask, np.float64)
        out[k] = np.sum(norms * w, axis=1) / np.maximum(np.sum(w, axis=1), 1.0)
    return out


def gate_saturation(record: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{cell: {gate: {"saturated", "below", "above"}}}`` fractions over valid steps."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k, r in record.items():
        mask = r["mask"]
        per_gate = {}
        for gate, (kind, a) in r["gates"].items():
            a = np.asarray(a, np.float64)  # (T, B, H)
            w = np.ones(a.shape[:2]) if mask is None else np.asarray(mask, np.float64)
            w = np.broadcast_to(w[..., None], a.shape)
            lo, hi = (SIGMOID_LOW, SIGMOID_HIGH) if kind == "sigmoid" else (-TANH_LIMIT,
                                                                             TANH_LIMIT)
            n = max(w.sum(), 1.0)
            below, above = float((w * (a < lo)).sum() / n), float((w * (a > hi)).sum() / n)
            per_gate[gate] = {"saturated": below + above, "below": below, "above": above,
                              "kind": kind}
        if per_gate:
            out[k] = per_gate
    return out


def spectral_radii(model: nnx.Module) -> dict[str, dict[str, float]]:
    """``{cell: {name: max |eig(M)|}}`` for each matrix ``M`` of ``cell.recurrent_matrices()``
    (the ``(H, H)`` gate blocks of ``w_hh``; ``{"lambda": diag(λ)}`` for the LRU). Cells
    with no recurrent matrix (min cells) are left out."""
    out = {}
    for name, cell in recurrent_cells(model):
        mats = cell.recurrent_matrices()
        if not mats:
            continue
        out[name] = {}
        for gate, m in mats.items():
            m = np.asarray(m)
            m = m.astype(np.complex128 if np.iscomplexobj(m) else np.float64)
            out[name][gate] = float(np.max(np.abs(np.linalg.eigvals(m))))
    return out


def diagnose(model: nnx.Module, loss_fn: Callable[[nnx.Module], Array]) -> dict[str, Any]:
    """All three measurements for ``loss_fn(model)``; JSON-ready."""
    loss, grads, record = hidden_grads(model, loss_fn)
    norms = grad_norms_over_time(grads, record)
    return {"loss": float(loss),
            "cells": {k: r["cell"] for k, r in record.items()},
            "grad_norms": {k: v.tolist() for k, v in norms.items()},
            "grad_summary": {k: _grad_summary(v) for k, v in norms.items()},
            "gate_saturation": gate_saturation(record),
            "spectral_radius": spectral_radii(model)}


def _grad_summary(norms: np.ndarray) -> dict[str, float]:
    """First/last step norms and the mean per-step factor between them.

    ``per_step_factor`` is ``(‖g_t0‖ / ‖g_last‖) ** (1 / (T-1-t0))`` from the
    earliest step ``t0`` whose gradient is not exactly zero: a float32 gradient
    that vanished far enough underflows to 0, and ``zero_steps`` counts those
    steps (padding never counts: the norms are means over valid rows).
    """
    first, last = float(norms[0]), float(norms[-1])
    nonzero = np.flatnonzero(norms > 0)
    factor = math.nan
    if last > 0 and len(nonzero) and nonzero[0] < len(norms) - 1:
        t0 = int(nonzero[0])
        factor = float((norms[t0] / last) ** (1.0 / (len(norms) - 1 - t0)))
    return {"first": first, "last": last, "max": float(np.max(norms)),
            "min": float(np.min(norms)),
            "first_over_last": first / last if last > 0 else math.inf,
            "per_step_factor": factor,
            "zero_steps": int(nonzero[0]) if len(nonzero) else len(norms)}


def task_loss_fn(task, batch: dict) -> Callable[[nnx.Module], Array]:
    """The eval-mode loss of a task on one batch (dict of arrays with leading B)."""
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    B = int(np.shape(next(iter(batch.values())))[0])

    def loss_fn(model):
        return task.loss(model, jbatch, task.init_task_state(model, B), False)[0]

    return loss_fn


def training_diagnostics(model: nnx.Module, task, batch: dict) -> dict[str, float]:
    """Flat scalars for ``metrics.jsonl`` (split ``diagnostics``) during training.

    Keys: ``<cell>/grad_first``, ``<cell>/grad_last``, ``<cell>/grad_factor`` (mean
    per-step growth of ``‖∂L/∂h_t‖`` towards the start; < 1 vanishes; NaN when
    undefined), ``<cell>/grad_zero_steps`` (leading steps whose gradient underflowed),
    ``<cell>/sat_<gate>`` and ``<cell>/rho_<gate>``.
    """
    d = diagnose(model, task_loss_fn(task, batch))
    out: dict[str, float] = {"loss": d["loss"]}
    for cell, s in d["grad_summary"].items():
        out[f"{cell}/grad_first"] = s["first"]
        out[f"{cell}/grad_last"] = s["last"]
        out[f"{cell}/grad_factor"] = s["per_step_factor"]
        out[f"{cell}/grad_zero_steps"] = float(s["zero_steps"])
    for cell, gates in d["gate_saturation"].items():
        for g, v in gates.items():
            out[f"{cell}/sat_{g}"] = v["saturated"]
    for cell, gates in d["spectral_radius"].items():
        for g, v in gates.items():
            out[f"{cell}/rho_{g}"] = v
    return out


# ---------------------------------------------------------------------------
# Workdirs and plots.
# ---------------------------------------------------------------------------
def plot_grad_flow(result: dict, path: str | Path, title: str = "") -> Path:
    """``‖∂L/∂h_t‖`` against ``t`` for every cell, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, norms in result["grad_norms"].items():
        norms = np.asarray(norms)
        ax.plot(np.arange(len(norms)), np.where(norms > 0, norms, np.nan),
                label=f"{name} ({result['cells'].get(name, '')})")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("‖∂L/∂h_t‖ (batch mean)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "gradient flow through time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def diagnose_workdir(workdir: str | Path, *, which: str = "best",
                     batch_size: int | None = None) -> dict[str, Any]:
    """Loads a trained workdir, diagnoses one eval batch, writes json and plot.

    The result's ``written`` lists the files written; a workdir that cannot be written
    (read-only) still gets its diagnosis, and ``not_written`` says what and why.
    """
    wd = Workdir(workdir)
    workdir = wd.path
    config, task, model, step = load_for_inference(workdir, which)
    batches = task.eval_batches(config.train.eval_batch_size)
    if not batches:
        raise ValueError(f"{workdir}: the task has no eval batches to diagnose")
    batch = batches[0]
    B = int(np.shape(next(iter(batch.values())))[0])
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch = {k: np.asarray(v)[:batch_size] for k, v in batch.items()}
        B = min(B, batch_size)
    result = diagnose(model, task_loss_fn(task, batch))
    result = {"workdir": str(workdir), "checkpoint_step": step, "batch_size": B,
              "cell": config.model.cell, **result}
    json_path, plot_path = wd.file(Workdir.DIAGNOSTICS), wd.plots_dir / "grad_flow.png"
    try:
        json_path.write_text(json.dumps(result, indent=2))
        plot_grad_flow(result, plot_path,
                       title=f"{workdir.name}: {config.model.cell}, step {step}")
        result["written"] = [str(json_path), str(plot_path)]
    except OSError as e:
        result["not_written"] = f"{e.filename or workdir}: {e.strerror or e}"
    return result


def training_hooks(config) -> list[Hook]:
    """The periodic work a config asks of training: gradient-flow diagnostics every
    ``train.diagnostics_every`` steps (none when it is 0)."""
    every = int(config.train.get("diagnostics_every", 0) or 0)
    return [Hook(every, "diagnostics", training_diagnostics)] if every > 0 else []
