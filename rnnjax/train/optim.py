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

``name = "nt_asgd"`` is rnnjax's own (:data:`OPTIMIZERS`, looked up before optax):
non-monotonically triggered averaged SGD (Merity et al. 2017), :func:`nt_asgd`; its
options go in ``kwargs`` (``nonmono``, ``interval``, ``monitor``, ``start_step``), and
:func:`averaged_params` gives the weights to evaluate and to ship. The trainer evaluates
(periodic and final evaluations, the best checkpoint's rank) at :func:`averaged_params`,
feeds each evaluation's loss to :func:`observe_metric` when ``monitor="eval"``, and its
train step passes ``value=loss`` to every optimiser update; ``rnnjax eval``/``sample``/
``decode`` restore the average from the checkpoint's optimiser state.
"""

from __future__ import annotations

import difflib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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


# ---------------------------------------------------------------------------
# NT-ASGD.
# ---------------------------------------------------------------------------
MONITORS = ("grad_norm", "loss", "eval")
DEFAULT_MONITOR = "grad_norm"


class NTASGDState(NamedTuple):
    """The state of :func:`nt_asgd`; every field is an array, so it checkpoints as is.

    ``avg`` is the mean of the ``n_avg`` iterates folded in since the trigger (the
    parameters each update received); the newest iterate, the one the trainer holds, is
    folded in by :func:`averaged_params`. Before the trigger ``n_avg == 0`` and ``avg``
    is unused. ``recent`` (the last ``nonmono`` monitor logs, a ring), ``older_min``
    (the minimum of every earlier log) and ``num_logs`` hold the non-monotone criterion;
    ``acc``/``acc_n`` sum the monitored value over the current interval.
    """

    count: jax.Array  # () int32: updates taken
    triggered: jax.Array  # () bool: averaging has started
    trigger_step: jax.Array  # () int32: the update at which it started (-1: not yet)
    n_avg: jax.Array  # () int32: iterates folded into avg
    avg: Any  # like params
    recent: jax.Array  # (nonmono,) float32
    older_min: jax.Array  # () float32
    num_logs: jax.Array  # () int32
    acc: jax.Array  # () float32
    acc_n: jax.Array  # () int32
    inner: Any  # the SGD state


def _nonmono_log(state: NTASGDState, value, nonmono: int) -> NTASGDState:
    """Appends one monitor log and applies Merity et al.'s rule: trigger when there are
    more than ``nonmono`` earlier logs and ``value > min(logs[:-nonmono])``."""
    L = state.num_logs
    fire = (L > nonmono) & (value > state.older_min)
    slot = L % nonmono
    older_min = jnp.where(L >= nonmono, jnp.minimum(state.older_min, state.recent[slot]),
                          state.older_min)
    recent = state.recent.at[slot].set(value)
    start = fire & ~state.triggered
    return state._replace(recent=recent, older_min=older_min, num_logs=L + 1,
                          triggered=state.triggered | fire,
                          trigger_step=jnp.where(start, state.count, state.trigger_step))


def nt_asgd(learning_rate: optax.ScalarOrSchedule, *, nonmono: int = 5, interval: int = 100,
            monitor: str = DEFAULT_MONITOR, start_step: int = 0,
            momentum: float | None = None) -> optax.GradientTransformationExtraArgs:
    """Non-monotonically triggered ASGD (Merity, Keskar & Socher 2017, Algorithm 1).

    Plain SGD (``learning_rate``, optional ``momentum``) whose iterates are averaged from
    the moment a monitored metric has not improved on its best older value for
    ``nonmono`` logs: a log is taken every ``interval`` updates (the mean of the metric
    over the interval) and averaging starts at the first log ``v`` with more than
    ``nonmono`` earlier logs and ``v > min(logs[:-nonmono])``. Once started it never
    stops; SGD goes on as before, and the average of the iterates since the trigger is
    what :func:`averaged_params` returns (before the trigger: the current iterate).

    What the metric is (``monitor``) is a choice forced by what reaches an optimiser:

    * ``"eval"`` (the paper's: validation loss): the optimiser never sees it; whoever
      evaluates calls :func:`observe_metric` after each evaluation (rnnjax's trainer does,
      with the task's ``eval_loss_metric``, before that step's checkpoint; so a log is one
      evaluation, ``train.eval_every`` steps, and ``interval`` is unused). Without those
      calls it never triggers (only ``start_step`` does).
    * ``"loss"``: the training loss, passed as ``update(..., value=loss)`` (optax's
      extra-argument convention, as ``optax.contrib.reduce_on_plateau``; rnnjax's train
      step passes it). A caller that does not pass it gets an error naming this option.
    * ``"grad_norm"`` (default, works with every trainer): the global norm of the
      incoming (clipped) gradient. A proxy: at a constant learning rate the stochastic
      gradient norm stops falling when SGD reaches its noise floor, which is also when
      the loss stops improving, but the two need not plateau at the same step.

    ``start_step`` > 0 forces the trigger at that update at the latest (ASGD's fixed t0).

    The state holds the average, the ``triggered`` flag and the trigger step, so a
    checkpoint of the optimiser state resumes the averaging exactly.
    """
    if monitor not in MONITORS:
        raise ValueError(f"nt_asgd: unknown monitor {monitor!r}; known: {list(MONITORS)}")
    if nonmono < 1 or interval < 1:
        raise ValueError(f"nt_asgd: nonmono ({nonmono}) and interval ({interval}) must be >= 1")
    inner = optax.sgd(learning_rate, momentum=momentum)

    def init(params):
        return NTASGDState(
            count=jnp.zeros((), jnp.int32), triggered=jnp.zeros((), bool),
            trigger_step=jnp.full((), -1, jnp.int32), n_avg=jnp.zeros((), jnp.int32),
            avg=jax.tree.map(jnp.zeros_like, params),
            recent=jnp.zeros((nonmono,), jnp.float32), older_min=jnp.full((), jnp.inf),
            num_logs=jnp.zeros((), jnp.int32), acc=jnp.zeros((), jnp.float32),
            acc_n=jnp.zeros((), jnp.int32), inner=inner.init(params))

    def update(updates, state, params=None, value=None, **extra):
        del extra
        if params is None:
            raise ValueError("nt_asgd averages the iterates: update() needs params")
        # Fold in the iterate this update starts from (the previous update's result) when
        # an update since the trigger produced it: a trigger by observe_metric (between
        # updates) averages from the next update's result on, as one inside an update
        # does, and as Merity et al.'s switch to ASGD after an evaluation does.
        fold = state.triggered & (state.count > state.trigger_step)
        n = state.n_avg + fold.astype(jnp.int32)
        w = jnp.where(fold, 1.0 / jnp.maximum(n, 1), 0.0)
        avg = jax.tree.map(lambda a, p: a + (p - a) * w.astype(a.dtype), state.avg, params)
        state = state._replace(avg=avg, n_avg=n)
        if monitor != "eval":
            if monitor == "loss":
                if value is None:
                    raise ValueError("nt_asgd(monitor='loss') needs the training loss as "
                                     "update(..., value=loss), as rnnjax's train step passes "
                                     "it; a caller that cannot pass it should use "
                                     "monitor='grad_norm' (or 'eval' with observe_metric)")
                v = jnp.asarray(value, jnp.float32)
            else:
                v = optax.tree.norm(updates).astype(jnp.float32)
            acc, acc_n = state.acc + v, state.acc_n + 1
            logged = _nonmono_log(state, acc / acc_n, nonmono)
            due = acc_n >= interval
            # Only the criterion's scalars: a select over the average would cost a pass
            # over every parameter per step.
            keep = {f: jnp.where(due, getattr(logged, f), getattr(state, f))
                    for f in ("recent", "older_min", "num_logs", "triggered", "trigger_step")}
            state = state._replace(acc=jnp.where(due, 0.0, acc),
                                   acc_n=jnp.where(due, 0, acc_n), **keep)
        if start_step > 0:
            force = (state.count + 1 >= start_step) & ~state.triggered
            state = state._replace(triggered=state.triggered | force,
                                   trigger_step=jnp.where(force, state.count,
                                                          state.trigger_step))
        out, inner_state = inner.update(updates, state.inner, params)
        return out, state._replace(count=state.count + 1, inner=inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def _map_nt(opt_state, fn):
    """Applies ``fn`` to every :class:`NTASGDState` in an optimiser state (a chain's tuple,
    the vmapped members' ``{"inner", "lr"}`` wrapper ...); returns the new state and
    whether one was found."""
    found = []

    def visit(node):
        if isinstance(node, NTASGDState):
            found.append(node)
            return fn(node)
        return node

    out = jax.tree.map(visit, opt_state, is_leaf=lambda n: isinstance(n, NTASGDState))
    return out, bool(found)


def is_averaging(opt_state) -> bool:
    """Whether ``opt_state`` holds an NT-ASGD state (anywhere in a chain or wrapper), i.e.
    whether :func:`averaged_params` may differ from the params. A host-side check of the
    tree's structure: the trainer asks it once, so that other optimisers' evaluations
    cost nothing extra."""
    return _map_nt(opt_state, lambda s: s)[1]


def observes_eval(cfg) -> bool:
    """Whether the optimiser that ``config.optim`` (``cfg``) builds must be fed every
    evaluation through :func:`observe_metric`: NT-ASGD with ``monitor="eval"``."""
    kwargs = dict(cfg.get("kwargs", {}) or {})
    return cfg.name == "nt_asgd" and kwargs.get("monitor", DEFAULT_MONITOR) == "eval"


def averaged_params(opt_state, params):
    """The weights to evaluate and ship: after the NT-ASGD trigger, the mean of the iterates
    that the updates since the trigger produced, the current ``params`` included; before
    it, or for any other optimiser, ``params`` itself. Pure and jittable; the trainer's
    hook for NT-ASGD. One run's state: for K stacked members, ``jax.vmap`` it."""
    states = []
    _map_nt(opt_state, lambda s: states.append(s) or s)
    if not states:
        return params
    s = states[0]
    n = s.n_avg + 1
    w = jnp.where(s.triggered, 1.0 / n, 1.0)  # weight of the current iterate
    return jax.tree.map(lambda a, p: a + (p - a) * w.astype(a.dtype), s.avg, params)


def observe_metric(opt_state, value):
    """Feeds one evaluation's metric (lower is better) to NT-ASGD's trigger: the trainer's
    hook after each evaluation, called only when its ``monitor`` is ``"eval"``
    (:func:`observes_eval`; the other monitors log inside ``update``). Pure; returns the
    new optimiser state (unchanged for any other optimiser). One run's state: for K
    stacked members, ``jax.vmap`` it."""
    def log(s: NTASGDState) -> NTASGDState:
        return _nonmono_log(s, jnp.asarray(value, jnp.float32), s.recent.shape[0])

    return _map_nt(opt_state, log)[0]


#: rnnjax's own optimisers, looked up by ``optim.name`` before optax.
OPTIMIZERS = {"nt_asgd": nt_asgd}


def _decay_mask(params):
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                   optax.GradientTransformation]:
    """Returns ``(clip, optimizer)``; apply them in that order."""
    factory = OPTIMIZERS.get(cfg.name) or getattr(optax, cfg.name, None)
    if factory is None or not callable(factory) or cfg.name.startswith("_"):
        known = [*OPTIMIZERS, "adam", "adamw", "sgd", "rmsprop", "adagrad", "lamb", "lion",
                 "adafactor", "nadam", "radam", "adabelief"]
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
