"""Training as one of N processes (``jax.distributed``): start-up, each process's share of
a batch, and who writes.

``initialize`` starts JAX's distributed runtime before any computation:
``jax.distributed.initialize()`` auto-detects SLURM, Open MPI, Kubernetes and Cloud TPU
environments; explicit ``coordinator``/``num_processes``/``process_id`` cover the rest
(two processes on one machine, say). On CPU the cross-process collectives are gloo's.
A single process never calls it and is unchanged.

With N processes the mesh spans every process's devices. Every process draws the same
global batch from the same seeded iterator (so the data order, and resume, are exactly
those of one process) and feeds only its own rows (:func:`global_batch`); parameters
and optimiser state are replicated (:func:`replicate`). Checkpoints are saved and
restored by all processes together (Orbax coordinates them); only process 0 writes the
run directory's other files (config, metrics, TensorBoard, plots, results).
"""

from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts ``jax.distributed`` (auto-detected when all three are None)."""
    # CPU collectives across processes need an implementation; gloo ships with jaxlib.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator is not None:
        kwargs["coordinator_address"] = coordinator
    if num_processes is not None:
        kwargs["num_processes"] = int(num_processes)
    if process_id is not None:
        kwargs["process_id"] = int(process_id)
    jax.distributed.initialize(**kwargs)


def is_main() -> bool:
    """Whether this process writes the run directory (process 0)."""
    return jax.process_index() == 0


def multi_process() -> bool:
    return jax.process_count() > 1


def global_batch(batch: dict, sharding) -> dict:
    """A global batch (every process holds the same numpy arrays) as global arrays sharded
    along the batch axis, each process contributing only the rows its devices hold."""
    if not multi_process():
        return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        index = sharding.addressable_devices_indices_map(v.shape)
        # The rows of this process's devices, in device order: one contiguous block.
        starts = sorted({idx[0].start or 0 for idx in index.values()})
        stops = sorted({idx[0].stop if idx[0].stop is not None else v.shape[0]
                        for idx in index.values()})
        local = v[starts[0]:stops[-1]]
        out[k] = jax.make_array_from_process_local_data(sharding, local, v.shape)
    return out


def replicate(tree, sharding):
    """Every leaf as an array replicated over ``sharding``'s mesh (all processes)."""
    if not multi_process():
        return jax.device_put(tree, sharding)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def to_host(tree):
    """Replicated global arrays as numpy (each process reads its own copy)."""
    if not multi_process():
        return tree
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0))
                        if isinstance(a, jax.Array) else a, tree)
