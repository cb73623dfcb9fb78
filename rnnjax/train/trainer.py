"""The trainer: ``train_and_evaluate(config, workdir)``, a plain loop around one jitted step.

It reads top to bottom: workdir and task -> model and optimiser -> checkpoint
restore -> loop (step, log, evaluate, checkpoint) -> final evaluation, plots.
The trainer never branches on a task name; it asks the task (``rnnjax.tasks``).

Per-step randomness is ``fold_in(rng, step)``. Data parallelism is a 1-D mesh
over all local devices along the batch axis; the same code runs on one CPU.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rnnjax.tasks.base import build
from rnnjax.train.checkpoint import Checkpointer
from rnnjax.train.metrics import MetricWriter, Progress, plot_curves
from rnnjax.train.optim import make_optimizer, make_schedule
from rnnjax.train.state import create_train_state
from rnnjax.train.steps import evaluate, make_eval_step, make_train_step

log = logging.getLogger("rnnjax")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


# ---------------------------------------------------------------------------
# Helpers for the loop.
# ---------------------------------------------------------------------------
def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _check_workdir_config(workdir: Path, config) -> None:
    """A workdir belongs to one config; only ``train.steps`` may change on resume."""
    path = workdir / "config.json"
    new = _config_json(config)
    if path.exists():
        old = json.loads(path.read_text())
        a, b = copy.deepcopy(old), copy.deepcopy(new)
        for d in (a, b):
            d.get("train", {}).pop("steps", None)
        if a != b:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"workdir {workdir} holds a run with a different config (sections {diff} "
                f"differ). Use a new --workdir, or delete {workdir} to start over.")
    path.write_text(json.dumps(new, indent=2, sort_keys=True))


def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


class _Stop:
    """Turns SIGTERM into a flag the loop checks, so the loop saves before exiting."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str | Path, *, progress: bool | None = None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Returns the final evaluation metrics, also written to ``workdir/results.json``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_config(workdir, config)
    tc = config.train
    total = int(tc.steps)

    # Task, data and model.
    task, model = build(config, workdir)
    task.save_artifacts(workdir)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if tc.batch_size % n_dev:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                         f"devices ({n_dev}) for data parallelism")
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def put_batch(batch):
        return {k: jax.device_put(np.asarray(v), data_sharding) for k, v in batch.items()}

    # Params train; RngState is reseeded every step; everything else (frozen
    # embeddings) is constant and rebuilt from the config, so not checkpointed.
    model.train()
    graphdef_train, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    model.eval()
    graphdef_eval = nnx.split(model, nnx.Param, nnx.RngState, ...)[0]

    # Optimiser.
    clip_tx, opt_tx = make_optimizer(config.optim, total)
    lr_schedule = make_schedule(config.optim, total)  # for logging only
    state = create_train_state(params, opt_tx, task.init_task_state(model, tc.batch_size))
    state = jax.tree.map(jnp.copy, jax.device_put(state, replicated))
    rng = jax.random.PRNGKey(config.seed)
    train_iter = task.train_iterator(tc.batch_size, config.seed)

    # Checkpoint restore. Order: fresh tree -> restore state into it -> data
    # position -> step. The RNG needs nothing: it is fold_in(rng, step).
    ckpt = Checkpointer(workdir / "checkpoints", keep=tc.keep_checkpoints,
                        best_metric=f"eval/{task.best_metric}", best_mode=task.best_mode)
    start = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        state = jax.tree.map(jnp.copy, jax.device_put(state, replicated))
        train_iter.load_state_dict(meta["data_state"])
        start = int(meta["step"])
        log.info("resumed from step %d in %s", start, workdir)

    train_step = jax.jit(make_train_step(task, graphdef_train, rng_state, consts, clip_tx, opt_tx),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(task, graphdef_eval, rng_state, consts))
    eval_batches = task.eval_batches(tc.eval_batch_size)
    writer = MetricWriter(workdir, tensorboard=tc.tensorboard)

    def save(step, eval_metrics=None):
        meta = {"step": step, "data_state": train_iter.state_dict(), "seed": config.seed}
        metrics = {f"eval/{k}": v for k, v in (eval_metrics or {}).items()
                   if isinstance(v, (int, float))} if eval_metrics else None
        ckpt.save(step, state, meta, metrics)

    bar = Progress(total, initial=start, enabled=progress)
    last_eval: dict[str, Any] | None = None
    t_last, steps_since = time.perf_counter(), 0
    try:
        with _Stop() as stop:
            for step in range(start + 1, total + 1):
                batch = next(train_iter)
                state, metrics = train_step(state, put_batch(batch), rng)
                metrics = jax.device_get(metrics)
                loss = float(metrics["loss"])
                finite = bool(metrics.pop("params_finite"))
                if not (math.isfinite(loss) and finite):
                    # Nothing of this step is saved: the checkpoints on disk all hold
                    # finite parameters.
                    good = ckpt.latest_step()
                    what = f"non-finite loss ({loss})" if not math.isfinite(loss) else \
                        "non-finite parameters after the update"
                    raise NonFiniteLossError(
                        f"{what} at step {step}. The last good checkpoint "
                        f"(step {good}) in {workdir / 'checkpoints'} is kept. Lower optim.lr, "
                        f"enable optim.clip, or check the data.")
                steps_since += 1
                if step % tc.log_every == 0 or step == total:
                    now = time.perf_counter()
                    metrics["steps_per_sec"] = steps_since / max(now - t_last, 1e-9)
                    metrics["lr"] = float(lr_schedule(step - 1))
                    t_last, steps_since = now, 0
                    writer.write(step, "train", metrics)
                if tc.diagnostics_every and step % tc.diagnostics_every == 0:
                    # Gradient flow through time on this step's batch, in eval mode
                    # (no dropout): rnnjax.diagnostics.training_diagnostics.
                    from rnnjax.diagnostics import training_diagnostics

                    diag_model = nnx.merge(graphdef_eval, state.params, rng_state, consts)
                    writer.write(step, "diagnostics",
                                 training_diagnostics(diag_model, task, batch))
                bar.update(1, loss=loss)
                did_eval = step % tc.eval_every == 0 or step == total
                if did_eval:
                    last_eval = evaluate(task, eval_step, state.params, eval_batches,
                                         put_batch)
                    writer.write(step, "eval", last_eval)
                if step % tc.checkpoint_every == 0 or step == total or stop.requested:
                    save(step, last_eval if did_eval else None)
                if stop.requested:
                    log.warning("SIGTERM: saved checkpoint at step %d; exiting", step)
                    raise SystemExit(143)
    finally:
        bar.close()
        writer.close()

    # Final evaluation on the best checkpoint's params would differ from the last;
    # we report the last (what train.steps asked for) and record the best step.
    if last_eval is None:
        last_eval = evaluate(task, eval_step, state.params, eval_batches, put_batch)
    final = dict(last_eval)
    final_model = nnx.merge(graphdef_eval, state.params, rng_state, consts)
    final.update(task.final_report(final_model, workdir))
    results = {"status": "done", "step": total, "best_step": ckpt.best_step(),
               "eval": {k: v for k, v in final.items()}}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    if tc.plots:
        plot_curves(workdir)
    ckpt.close()
    return final


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
