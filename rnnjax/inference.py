"""Inference on a trained run directory: rebuild the model, restore it, evaluate it.

``load_for_inference(workdir)`` reads the run's config, builds the task and the model
as training did, and restores the ``best`` or ``latest`` checkpoint's parameters;
``run_eval`` evaluates them on the task's eval set. The command line's ``eval``,
``sample``, ``decode`` and ``diagnose`` start here.

This module never imports the training loop, the sweeps or the CLI: it reads a run
directory through :mod:`rnnjax.train.workdir` and evaluates with the pure steps of
:mod:`rnnjax.train.steps`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.tasks.base import build
from rnnjax.train.steps import evaluate, make_eval_step
from rnnjax.train.workdir import Workdir


def load_for_inference(workdir: str | Path, which: str = "best"):
    """Rebuilds the model of a workdir and restores the ``best`` or ``latest`` params.

    Returns ``(config, task, model, step)`` with the model in eval mode and the
    checkpoint's step.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    wd = Workdir(workdir)
    config = wd.read_config()
    task, model = build(config, wd.path)
    model.eval()
    graphdef, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    params, step = wd.restore_params(task, config, model, params, which)
    model = nnx.merge(graphdef, params, rng_state, consts)
    model.eval()
    return config, task, model, step


def run_eval(workdir: str | Path, which: str = "best") -> dict:
    """Evaluates a trained workdir on its task's eval set; returns the metrics."""
    config, task, model, step = load_for_inference(workdir, which)
    graphdef, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    eval_step = jax.jit(make_eval_step(task, graphdef, rng_state, consts))
    metrics = evaluate(task, eval_step, params, task.eval_batches(config.train.eval_batch_size),
                       lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    metrics["checkpoint_step"] = step
    return metrics
