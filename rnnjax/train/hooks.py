"""Periodic work handed to the training loop from outside it.

The loop (:mod:`rnnjax.train.trainer`) knows nothing about diagnostics or other
measurements; whoever starts training hands it :class:`Hook` objects, e.g.
:func:`rnnjax.diagnostics.training_hooks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Hook:
    """Every ``every`` steps, ``fn(model, task, batch)`` runs on a member's eval-mode
    model and this step's batch, and the scalars it returns are written to
    ``metrics.jsonl`` under ``split``."""

    every: int
    split: str
    fn: Callable[[Any, Any, dict], dict]
