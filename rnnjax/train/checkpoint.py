"""The one checkpoint factory: an Orbax ``CheckpointManager`` for exact resume.

A checkpoint holds two items:

* ``state``: the train-state pytree (parameters, optimiser state, task state
  such as a stateful LM's carry) saved with ``StandardSave``;
* ``meta``: JSON with the step, the RNG seed key, the data iterator position
  and the metrics of that step.

It keeps the last ``keep`` checkpoints plus the best one by ``best_metric``.

Resume order (see ``trainer.train_and_evaluate``): build the task and model
from the config -> build the optimiser -> restore ``state`` into the freshly
initialised tree (same structure, shapes, dtypes and shardings) -> restore the
data position and step from ``meta`` -> continue the loop at ``step + 1``. The
per-step RNG is ``fold_in(rng, step)``, so it needs no state of its own.

A missing or corrupt checkpoint raises :class:`CheckpointError` with what was
wrong and what to do; nothing here deletes a workdir.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class CheckpointError(RuntimeError):
    """A checkpoint could not be read; the message says which and what to do."""


log = logging.getLogger("rnnjax")


class _QuietOrbax(logging.Filter):
    """Drops Orbax's per-save warning for a checkpoint saved between evaluations (it has
    no metric to rank by, which is expected: the best one is ranked at eval steps)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOrbax())


class Checkpointer:
    """Saves and restores ``(state_tree, meta)`` under ``workdir/checkpoints``."""

    def __init__(self, directory: str | Path, *, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "min"):
        if best_mode not in ("min", "max"):
            raise ValueError(f"checkpoint best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        policies: list[pp.PreservationPolicy] = [pp.LatestN(n=keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=(best_mode == "min"), n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            # best_fn/best_mode make manager.best_step() rank by the metric (the
            # policy above only decides what is kept).
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            # Synchronous saves: a SIGTERM or a NaN must not race a background write.
            enable_async_checkpointing=False,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            metrics = None
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure of ``target`` (arrays or ShapeDtypeStructs).

        With ``step=None`` it restores the newest checkpoint that can be read: an
        unreadable one (a disk that filled up, a copy cut short) is moved aside to
        ``<step>.unreadable-<time>`` (never deleted), one line says so, and the next
        older one is tried.
        """
        steps = self.all_steps()
        if step is not None:
            return self._restore(target, step, steps)
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {self.directory}; train first with "
                f"`rnnjax train --config ... --workdir {self.directory.parent}`")
        for s in sorted(steps, reverse=True):
            try:
                return self._restore(target, s, steps)
            except CheckpointError as e:
                if s == min(steps):
                    raise
                aside = self.directory / f"{s}.unreadable-{int(time.time())}"
                (self.directory / str(s)).rename(aside)
                why = str(e.__cause__).split("[tensorstore_spec")[0].strip()[:160]
                log.warning("checkpoint step %d in %s could not be read (%s); moved it to %s "
                            "(nothing is deleted) and falling back to an earlier checkpoint",
                            s, self.directory, why, aside.name)
                self.manager.reload()
        raise AssertionError("unreachable")

    def _restore(self, target: Any, step: int, steps: list[int]) -> tuple[Any, dict]:
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (found steps {steps}); "
                f"train first with `rnnjax train --config ... --workdir "
                f"{self.directory.parent}`")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                              meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for a damaged directory
            first = str(e).split("[tensorstore_spec")[0].strip().splitlines()
            first = first[0][:200] if first else ""
            raise CheckpointError(
                f"checkpoint for step {step} in {self.directory} could not be read "
                f"({type(e).__name__}: {first}). It may be corrupt or written by a "
                f"different model/config: use an earlier checkpoint "
                f"{[s for s in steps if s != step]} or a fresh workdir.") from e
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()
