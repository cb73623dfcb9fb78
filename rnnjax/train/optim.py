"""Optax optimisers, schedules, weight decay and gradient clipping from a config.

``config.optim`` fields (all in every config, see ``configs/adding.py``):

* ``name``: any optax optimiser taking a learning rate, looked up on optax by
  name (``adam``, ``adamw``, ``sgd``, ``rmsprop``, ...); ``kwargs`` go to it.
* ``lr`` and ``schedule``: ``constant``, ``warmup_cosine`` (``warmup_steps``,
  decays to ``end_lr_factor * lr`` at the last step) or ``exponential``
  (``decay_rate`` every ``decay_steps``).
* ``weight_decay``: for ``adamw`` AdamW's decoupled decay; for any other
  optimiser an L2 term added to the gradient before it
  (``optax.add_decayed_weights``). Either way masked to matrices (``ndim >= 2``),
  so biases and gains are not decayed.
* ``clip``: ``none``, ``global_norm`` (``clip_by_global_norm(clip_value)``),
  ``value`` (``clip(clip_value)``, per element) or ``adaptive``
  (``adaptive_grad_clip(clip_value)``, Brock et al. 2021).

Clipping is returned as its own transformation so the trainer can log the
gradient norm before and after it.
"""

from __future__ import annotations

import difflib

import jax
import optax

SCHEDULES = ("constant", "warmup_cosine", "exponential")
CLIPS = ("none", "global_norm", "value", "adaptive")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
            decay_steps=max(total_steps, cfg.warmup_steps + 1),
            end_value=cfg.lr * cfg.end_lr_factor)
    if cfg.schedule == "exponential":
        return optax.exponential_decay(cfg.lr, transition_steps=cfg.decay_steps,
                                       decay_rate=cfg.decay_rate,
                                       transition_begin=cfg.warmup_steps)
    raise ValueError(f"unknown optim.schedule {cfg.schedule!r}; known: {list(SCHEDULES)}")


def make_clip(cfg) -> optax.GradientTransformation:
    kind = cfg.clip
    if kind == "none":
        return optax.identity()
    if kind == "global_norm":
        return optax.clip_by_global_norm(cfg.clip_value)
    if kind == "value":
        return optax.clip(cfg.clip_value)
    if kind == "adaptive":
        return optax.adaptive_grad_clip(cfg.clip_value)
    raise ValueError(f"unknown optim.clip {kind!r}; known: {list(CLIPS)}")


def _decay_mask(params):
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                   optax.GradientTransformation]:
    """Returns ``(clip, optimizer)``; apply them in that order."""
    factory = getattr(optax, cfg.name, None)
    if factory is None or not callable(factory) or cfg.name.startswith("_"):
        known = ["adam", "adamw", "sgd", "rmsprop", "adagrad", "lamb", "lion", "adafactor",
                 "nadam", "radam", "adabelief"]
        close = difflib.get_close_matches(cfg.name, known, n=3)
        raise ValueError(f"unknown optimiser optim.name={cfg.name!r}; any optax optimiser works, "
                         f"e.g. {known}" + (f"; did you mean {close}?" if close else ""))
    kwargs = dict(cfg.get("kwargs", {}) or {})
    tx = factory(learning_rate=make_schedule(cfg, total_steps), **kwargs)
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask), tx) \
            if cfg.name != "adamw" else factory(learning_rate=make_schedule(cfg, total_steps),
                                                weight_decay=cfg.weight_decay,
                                                mask=_decay_mask, **kwargs)
    return make_clip(cfg), tx
