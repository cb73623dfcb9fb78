"""The pure functions of training: one train step and one eval step.

``make_train_step(...)`` returns ``(state, batch, rng) -> (state, metrics)`` over a
:class:`rnnjax.train.state.TrainState`; the loop jits it with the state donated,
and ``jax.vmap``s it when K members train together. ``make_eval_step`` returns
``(params, batch) -> sums`` that the task turns into metrics. Neither reads a
config, a file or a clock: everything they use is an argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rnnjax.train.state import TrainState


def _fresh(state):
    """Copies a State into new Variables of the current trace.

    Dropout mutates its RNG count; Variables closed over from an outer trace may
    not be mutated inside an inner one (jit -> grad), so each trace gets its own.
    """
    return jax.tree.map(lambda v: v, state)


def make_train_step(task, graphdef, rng_state, consts, clip_tx, opt_tx):
    """``(state, batch, rng) -> (state, metrics)``, pure; jit it with donated state.

    Per-step randomness is ``fold_in(rng, state.step)``. ``metrics`` holds the
    task's metrics, the loss, the gradient norm before and after clipping, the
    update and parameter norms, and ``params_finite`` (whether every updated
    parameter is finite).

    The optimiser gets the loss as ``update(..., value=loss)``, optax's extra-argument
    convention (NT-ASGD's ``monitor="loss"`` reads it); a transformation that takes no
    extra arguments never sees it, so for those the step is the same program.
    """
    opt_tx = optax.with_extra_args_support(opt_tx)

    def train_step(state: TrainState, batch, rng):
        # Dropout keys for this step: fold_in(rng, step), set outside the grad trace.
        seeded = nnx.merge(graphdef, state.params, _fresh(rng_state), consts)
        nnx.reseed(seeded, dropout=jax.random.fold_in(rng, state.step))
        step_rngs = nnx.state(seeded, nnx.RngState)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, _fresh(step_rngs), consts)
            return task.loss(model, batch, state.task_state, True)

        (loss, (metrics, task_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        clipped, _ = clip_tx.update(grads, clip_tx.init(state.params), state.params)
        updates, opt_state = opt_tx.update(clipped, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        metrics = dict(metrics, loss=loss,
                       grad_norm=optax.tree.norm(grads),
                       grad_norm_clipped=optax.tree.norm(clipped),
                       update_norm=optax.tree.norm(updates),
                       param_norm=optax.tree.norm(params),
                       params_finite=finite)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                               task_state=jax.lax.stop_gradient(task_state))
        return new_state, metrics

    return train_step


def make_eval_step(task, graphdef, rng_state, consts):
    """``(params, batch) -> sums``: the task's per-batch evaluation sums, pure."""

    def eval_step(params, batch):
        model = nnx.merge(graphdef, params, rng_state, consts)
        return task.eval_sums(model, batch)

    return eval_step


def evaluate(task, eval_step, params, batches, put_batch) -> dict[str, Any]:
    """Sums ``eval_step`` over ``batches`` on the host and lets the task summarise."""
    sums: dict[str, np.ndarray] = {}
    for batch in batches:
        out = jax.device_get(eval_step(params, put_batch(batch)))
        for k, v in out.items():
            sums[k] = sums[k] + np.asarray(v) if k in sums else np.asarray(v)
    return task.summarize(sums)
