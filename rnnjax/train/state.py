"""The train state: one named structure, created in one place.

``TrainState`` is what a train step maps to its successor and what a checkpoint
holds: the step counter, the trainable parameters, the optimiser state and the
task state (a stateful language model's carry, say). It is a ``flax.struct``
dataclass, so it is a pytree that ``jax.jit``, ``jax.vmap`` (a leading member axis
when K runs train together) and Orbax handle as they handle a dict.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # () int32: steps taken
    params: Any  # nnx.State of the nnx.Param variables
    opt_state: Any  # the optax state of ``opt_tx``
    task_state: Any  # carried across steps by the task (e.g. an LM's carry); {} if none


def create_train_state(params: Any, opt_tx: optax.GradientTransformation,
                       task_state: Any = None) -> TrainState:
    """The state at step 0. Every leaf is a fresh buffer: a carry may hold one zeros
    buffer twice (``LSTMState(z, z)``), and a donated argument must not alias itself."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=opt_tx.init(params),
                       task_state={} if task_state is None else task_state)
    return jax.tree.map(jnp.copy, state)
