"""The one training loop: K members (K = 1 for a single run), each in its own run directory.

``train_and_evaluate(config, workdir)`` trains one run; ``train_members(configs,
workdirs)`` trains K runs that differ only in ``seed`` and ``optim.lr`` as one
program, ``jax.vmap`` of the same pure train step over a leading member axis
(K small recurrent models leave a CPU mostly idle between tiny matmuls; one wider
program fills it). Both are this one loop, and it reads top to bottom:

1. members: each config's task, data and model, built before anything is written;
2. the optimiser (with per-member learning rates held in the optimiser state);
3. the train state, restored from each member's checkpoints when there are some;
4. the loop: step, log, periodic hooks (diagnostics), evaluate, checkpoint;
5. the final evaluation, ``results.json`` and plots, per member.

Every member has its own workdir (:class:`rnnjax.train.workdir.Workdir`), its own
checkpoints (the last N plus the best), its own non-finite stop (a member whose loss
or parameters become non-finite is recorded in its ``failed.json``, its checkpoints
keep only finite parameters, and the other members go on), resume, a save on
SIGTERM/SIGINT, and periodic hooks. With K = 1 nothing is vmapped and the numbers
are those of a plain jitted step.

Per-step randomness is ``fold_in(PRNGKey(seed), step)``. Data parallelism is a 1-D
mesh over all local devices along the batch axis. The trainer never branches on a
task name (it asks the task), and it imports neither diagnostics nor inference:
periodic work comes in as :class:`Hook` objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rnnjax.config_schema import validate
from rnnjax.tasks.base import build
from rnnjax.train import distributed
from rnnjax.train.hooks import Hook
from rnnjax.train.metrics import MetricWriter, Progress, latest_rows, plot_curves, read_metrics
from rnnjax.train.optim import (
    averaged_params,
    is_averaging,
    make_optimizer,
    make_schedule,
    observe_metric,
    observes_eval,
)
from rnnjax.train.prefetch import Prefetcher
from rnnjax.train.state import TrainState, create_train_state
from rnnjax.train.steps import evaluate, make_eval_step, make_train_step
from rnnjax.train.workdir import Workdir, config_json

log = logging.getLogger("rnnjax")

#: The config keys in which members of one vmapped group may differ.
MEMBER_KEYS = ("seed", "optim.lr")


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or infinite; the message names the step."""


class VmapUnsupported(ValueError):
    """The members' programs differ (the task reads the seed inside the step)."""


# ---------------------------------------------------------------------------
# Members.
# ---------------------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_members(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError unless the configs differ only in :data:`MEMBER_KEYS`."""
    if not configs:
        raise ValueError("training needs at least one config")
    ref = _flat(config_json(configs[0]))
    for i, c in enumerate(configs[1:], 1):
        other = _flat(config_json(c))
        diff = sorted(k for k in set(ref) | set(other)
                      if k not in MEMBER_KEYS and ref.get(k) != other.get(k))
        if diff:
            raise ValueError(f"vmapped members may differ only in {list(MEMBER_KEYS)}; member "
                             f"{i} also differs in {diff}. Run them as separate trials.")


def scale_by_member_lr(inner: optax.GradientTransformation,
                       lr: float) -> optax.GradientTransformation:
    """``inner`` (built at lr = 1) with its updates times ``lr``, held in the state.

    Keeping ``lr`` in the optimiser state is what lets ``vmap`` give every member its
    own learning rate through one shared transformation. It is exact for every optax
    optimiser whose update is ``-lr * direction`` (adam, adamw, sgd, rmsprop, lion,
    ...) and every schedule of :mod:`rnnjax.train.optim` (all linear in ``lr``;
    :func:`_check_linear_schedule` checks). Extra arguments (the train step's
    ``value=loss``) go on to ``inner``.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return {"inner": inner.init(params), "lr": jnp.asarray(lr, jnp.float32)}

    def update(updates, state, params=None, **extra_args):
        upd, inner_state = inner.update(updates, state["inner"], params, **extra_args)
        upd = jax.tree.map(lambda u: u * state["lr"].astype(u.dtype), upd)
        return upd, {"inner": inner_state, "lr": state["lr"]}

    return optax.GradientTransformationExtraArgs(init, update)


def _check_linear_schedule(cfg, total: int) -> None:
    unit = ml_collections.ConfigDict(cfg.to_dict())
    unit.lr = 1.0
    s1, sa = make_schedule(unit, total), make_schedule(cfg, total)
    for step in sorted({0, 1, total // 3, total // 2, total - 1}):
        a, b = float(sa(step)), float(cfg.lr) * float(s1(step))
        if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12):
            raise ValueError(f"optim.schedule={cfg.schedule!r} is not linear in optim.lr "
                             f"(step {step}: {a} != lr * {float(s1(step))}); vmapped members "
                             f"with different lr need a schedule linear in lr")


def _check_same_program(fns, args, what: str) -> None:
    """Raises VmapUnsupported unless every fn traces to the same jaxpr and constants."""
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), args)
    ref = None
    for i, fn in enumerate(fns):
        closed = jax.make_jaxpr(fn)(*args)
        sig = (str(closed.jaxpr), [np.asarray(c).tobytes() if hasattr(c, "dtype") else repr(c)
                                   for c in closed.consts])
        if ref is None:
            ref = sig
        elif sig != ref:
            raise VmapUnsupported(
                f"vmapped member {i}'s {what} is a different program from member 0's: the "
                f"task uses its config's seed inside the step (e.g. scheduled-sampling coins), "
                f"so one vmapped program cannot serve every seed. Run these trials without "
                f"--vmap-seeds.")


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, k: int):
    return jax.tree.map(lambda a: a[k], tree)


def _stack_batches(batches: list[dict], step: int) -> dict[str, np.ndarray]:
    ref = batches[0]
    want = {k: np.shape(v) for k, v in ref.items()}
    for i, b in enumerate(batches[1:], 1):
        shapes = {k: np.shape(v) for k, v in b.items()}
        if shapes != want:
            raise ValueError(f"vmapped members need batches of one shape; at step {step} "
                             f"member {i} has {shapes}, member 0 {want} (length bucketing "
                             f"gives each member its own T). Set data.bucket=False or run "
                             f"without --vmap-seeds.")
    return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in ref}


@dataclasses.dataclass
class _Member:
    """What the loop keeps per member."""

    index: int
    config: ml_collections.ConfigDict
    workdir: Workdir
    task: Any
    model: nnx.Module
    data: Any = None  # the train iterator (state_dict / load_state_dict)
    ckpt: Any = None
    writer: MetricWriter | None = None
    schedule: Any = None
    last_eval: dict | None = None
    failed: str | None = None  # the error line, once the member diverged

    @property
    def rng(self):
        return jax.random.PRNGKey(self.config.seed)


def _on_disk(state: TrainState, wrapped: bool) -> TrainState:
    """What a checkpoint holds: with per-member learning rates, the inner (lr = 1)
    optimiser state, which has a single run's structure (Adam-type states do not
    depend on lr), so that eval, diagnose and a later single run restore it as theirs."""
    return state.replace(opt_state=state.opt_state["inner"]) if wrapped else state


def _in_memory(restored: TrainState, fresh: TrainState, wrapped: bool) -> TrainState:
    """The inverse of :func:`_on_disk`: the member's lr comes from its config."""
    if not wrapped:
        return restored
    return restored.replace(opt_state={"inner": restored.opt_state,
                                       "lr": fresh.opt_state["lr"]})


def quality_warnings(task, final: dict, workdir: Workdir) -> list[str]:
    """Says when a run that finished is far worse than where it started or than the
    task's baseline (a diverged run that stayed finite, say): "done" is not "good".

    The reference is the task's ``baseline_<metric>`` when it reports one, else the
    first evaluation of the run. Worse means: twice the reference for a metric to
    minimise, half of it for one to maximise.
    """
    key = task.best_metric
    value = final.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    out = []
    refs = []
    if isinstance(final.get(f"baseline_{key}"), (int, float)):
        refs.append(("the task's baseline", float(final[f"baseline_{key}"])))
    first = next((r for r in latest_rows(read_metrics(workdir.path))
                  if r.get("split") == "eval" and isinstance(r.get(key), (int, float))), None)
    if first is not None:
        refs.append((f"the first evaluation (step {first['step']})", float(first[key])))
    for what, ref in refs:
        bad = (not math.isfinite(value)) or (
            value > 2 * ref if task.best_mode == "min" else value < 0.5 * ref)
        if bad:
            out.append(f"final eval {key}={value:.4g} is far worse than {what} ({ref:.4g}): "
                       f"the run diverged or did not learn; lower optim.lr or check the data")
    return out


class _NoWriter:
    """What processes other than 0 write metrics to: nothing."""

    def write(self, *args, **kwargs):
        return {}

    def close(self):
        pass


def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


class _Stop:
    """Turns SIGTERM and SIGINT into a flag the loop checks, so it saves before exiting.

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler
                pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str | Path, *, progress: bool | None = None,
                       hooks: Sequence[Hook] = ()) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Returns the final evaluation metrics, also written to ``workdir/results.json``.
    Raises :class:`NonFiniteLossError` (after recording it in ``failed.json``) when
    the loss or the parameters become non-finite.
    """
    return train_members([config], [workdir], progress=progress, hooks=hooks)[0]


def train_members(configs: Sequence[ml_collections.ConfigDict],
                  workdirs: Sequence[str | Path], *, progress: bool | None = None,
                  hooks: Sequence[Hook] = ()) -> list[dict | None]:
    """Trains K members at once (see the module docstring); K = 1 is a plain run.

    Returns each member's final eval metrics, or None for a member that diverged
    (its ``failed.json`` says at which step). With K = 1 a divergence raises
    :class:`NonFiniteLossError` instead. Members whose steps are different programs
    (:class:`VmapUnsupported`) are trained one after another.
    """
    configs = list(configs)
    workdirs = [Workdir(w) for w in workdirs]
    for c in configs:
        validate(c)
    check_members(configs)
    if len(configs) != len(workdirs):
        raise ValueError(f"got {len(configs)} configs but {len(workdirs)} workdirs")
    if len({w.path.resolve() for w in workdirs}) != len(workdirs):
        raise ValueError("every member needs its own workdir")
    for w, c in zip(workdirs, configs):
        w.check_config(c)
        done = w.latest_checkpoint_step()
        if done is not None and done > int(c.train.steps):
            raise ValueError(
                f"{w.path} holds a checkpoint at step {done}, beyond train.steps="
                f"{c.train.steps}: a run cannot be shortened. Set --config.train.steps="
                f"{done} (or more) to report or extend it, or use a new --workdir.")
    if all(w.is_finished(c) for w, c in zip(workdirs, configs)):
        # A finished run only reports: nothing is written (a read-only workdir works).
        log.warning("already done: %s", ", ".join(str(w.path) for w in workdirs))
        return [w.read_results()["eval"] for w in workdirs]
    if distributed.multi_process() and len(configs) > 1:
        raise ValueError("vmapped members (several --workdir) and multi-process training do "
                         "not combine: run the members as separate multi-process runs")
    with contextlib.ExitStack() as stack:
        # With N processes, process 0 holds the lock for all of them.
        for w in sorted(workdirs, key=lambda w: str(w.path.resolve())):
            if distributed.is_main():
                stack.enter_context(w.locked())
        try:
            return _train(configs, workdirs, progress=progress, hooks=hooks)
        except VmapUnsupported as e:
            log.warning("%s\nTraining the %d members one after another.", e, len(configs))
            out = []
            for c, w in zip(configs, workdirs):
                try:
                    out.append(_train([c], [w], progress=progress, hooks=hooks)[0])
                except NonFiniteLossError:
                    out.append(None)
            return out


def _train(configs, workdirs: list[Workdir], *, progress, hooks) -> list[dict | None]:
    K = len(configs)
    vmapped = K > 1
    cfg0 = configs[0]
    tc = cfg0.train
    total = int(tc.steps)

    # 1. Members: task, data and model. Nothing is written before all of them build.
    members = []
    for i, (c, w) in enumerate(zip(configs, workdirs)):
        task, model = build(c, w.path)
        members.append(_Member(i, c, w, task, model))
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if tc.batch_size % n_dev:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                         f"devices ({n_dev}) for data parallelism")
    data_sharding = NamedSharding(mesh, P(None, "data") if vmapped else P("data"))
    replicated = NamedSharding(mesh, P())

    def put_batch(batch):
        return distributed.global_batch(batch, data_sharding)

    main = distributed.is_main()  # writes the run directory (process 0 of N)

    # Params train; RngState is reseeded every step; everything else (frozen
    # embeddings) is constant and rebuilt from the config, so not checkpointed.
    parts = []
    for m in members:
        m.model.train()
        parts.append(nnx.split(m.model, nnx.Param, nnx.RngState, ...))
    graphdef_train = parts[0][0]
    members[0].model.eval()
    graphdef_eval = nnx.split(members[0].model, nnx.Param, nnx.RngState, ...)[0]

    # 2. The optimiser: the config's own; members with different lrs share one built at
    # lr = 1 whose updates each member scales by its own lr (held in its optimiser state).
    lrs = [float(c.optim.lr) for c in configs]
    wrapped = len(set(lrs)) > 1
    if not wrapped:
        clip_tx, opt_tx = make_optimizer(cfg0.optim, total)
        member_tx = [opt_tx] * K
    else:
        _check_linear_schedule(cfg0.optim, total)
        unit = ml_collections.ConfigDict(cfg0.optim.to_dict())
        unit.lr = 1.0
        clip_tx, inner = make_optimizer(unit, total)
        member_tx = [scale_by_member_lr(inner, lr) for lr in lrs]
        opt_tx = member_tx[0]  # the same update function; the lr lives in the state

    # 3. The train state, restored per member. Resume order: fresh state -> restore the
    # checkpoint into its structure -> the data position -> the step. The RNG needs
    # nothing: it is fold_in(PRNGKey(seed), step).
    states = []
    for m, (_, params, _, _), tx in zip(members, parts, member_tx):
        states.append(create_train_state(params, tx,
                                         m.task.init_task_state(m.model, tc.batch_size)))
        m.data = m.task.train_iterator(tc.batch_size, m.config.seed)
        m.schedule = make_schedule(m.config.optim, total)
    eval_sets = [m.task.eval_batches(tc.eval_batch_size) for m in members]
    if len({len(e) for e in eval_sets}) != 1:
        raise ValueError(f"vmapped members have eval sets of different sizes "
                         f"{[len(e) for e in eval_sets]}")

    def member_step_of(task):
        def member_step(state, batch, rng, rng_state, consts):
            step = make_train_step(task, graphdef_train, rng_state, consts, clip_tx, opt_tx)
            return step(state, batch, rng)
        return member_step

    def member_eval_of(task):
        def member_eval(params, batch, rng_state, consts):
            return make_eval_step(task, graphdef_eval, rng_state, consts)(params, batch)
        return member_eval

    if vmapped:
        # One traced program serves every member, so it must not depend on which
        # member's task built it (a loss that draws coins from PRNGKey(seed) would).
        probe = next(members[0].task.train_iterator(tc.batch_size, members[0].config.seed))
        _check_same_program([member_step_of(m.task) for m in members],
                            (states[0], probe, members[0].rng, parts[0][2], parts[0][3]),
                            "train step")
        _check_same_program([member_eval_of(m.task) for m in members],
                            (states[0].params, eval_sets[0][0], parts[0][2], parts[0][3]),
                            "eval step")

    # Now the run has really started: record the config and the task's files.
    latest = []
    for m in members:
        if main:
            m.workdir.write_config(m.config)
            m.task.save_artifacts(m.workdir.path)
        m.ckpt = m.workdir.checkpointer(m.task, tc.keep_checkpoints)
        latest.append(m.ckpt.latest_step() or 0)
    # Vmapped members are saved one after another; a kill between two saves leaves them
    # one checkpoint apart, and every member keeps its previous one: resume at the older.
    # A single run resumes from its newest readable checkpoint (see Checkpointer.restore).
    start = min(latest)
    if start:
        for k, m in enumerate(members):
            if vmapped and start not in m.ckpt.all_steps():
                raise ValueError(
                    f"vmapped members are at different steps and {m.workdir.path} has no "
                    f"checkpoint at step {start} (it has {m.ckpt.all_steps()}); run the "
                    f"members separately.")
            restored, meta = m.ckpt.restore(_on_disk(states[k], wrapped),
                                            start if vmapped else None)
            states[k] = _in_memory(restored, states[k], wrapped)
            m.data.load_state_dict(meta["data_state"])
            start = int(meta["step"])
        log.warning("resumed from step %d in %s", start,
                    ", ".join(str(m.workdir.path) for m in members))
    for m in members:
        if main:
            m.workdir.truncate_metrics(after_step=start)
    state = _stack(states) if vmapped else states[0]
    state = jax.tree.map(jnp.copy, distributed.replicate(state, replicated))
    rng_states = _stack([p[2] for p in parts]) if vmapped else parts[0][2]
    consts = _stack([p[3] for p in parts]) if vmapped else parts[0][3]
    rngs = jnp.stack([m.rng for m in members]) if vmapped else members[0].rng

    if vmapped:
        step_fn = jax.jit(jax.vmap(member_step_of(members[0].task)), donate_argnums=(0,))
        eval_fn = jax.jit(jax.vmap(member_eval_of(members[0].task)))
        eval_batches = [_stack_batches(list(bs), 0) for bs in zip(*eval_sets)]
    else:
        single_step = jax.jit(make_train_step(members[0].task, graphdef_train, rng_states,
                                              consts, clip_tx, opt_tx), donate_argnums=(0,))
        single_eval = jax.jit(make_eval_step(members[0].task, graphdef_eval, rng_states,
                                             consts))
        eval_batches = eval_sets[0]

        def step_fn(state, batch, rng, rng_state, consts):
            return single_step(state, batch, rng)

        def eval_fn(params, batch, rng_state, consts):
            return single_eval(params, batch)

    # NT-ASGD: what is evaluated (periodic and final evaluations, so also the best
    # checkpoint's rank, and the final report) is the average of the iterates,
    # optim.averaged_params, computed once per evaluation; with monitor="eval" each
    # evaluation's loss goes back to the optimiser (optim.observe_metric) before that
    # step's checkpoint is saved, so a resumed run holds the same logs as an uninterrupted
    # one. Any other optimiser evaluates state.params as it is, with no extra work.
    averaging, observing = is_averaging(states[0].opt_state), observes_eval(cfg0.optim)
    average_fn = jax.jit(jax.vmap(averaged_params) if vmapped else averaged_params)
    observe_fn = jax.jit(jax.vmap(observe_metric) if vmapped else observe_metric,
                         donate_argnums=(0,))

    def observe(state: TrainState, evals: list[dict]) -> TrainState:
        key = members[0].task.eval_loss_metric
        if key not in evals[0]:
            raise ValueError(f"optim.kwargs.monitor='eval' feeds NT-ASGD the task's eval loss "
                             f"{key!r} (Task.eval_loss_metric), which its evaluation does not "
                             f"report (it reports {sorted(evals[0])}); use monitor='loss'")
        values = np.asarray([float(ev[key]) for ev in evals], np.float32)
        return state.replace(opt_state=observe_fn(state.opt_state,
                                                  values if vmapped else values[0]))

    def run_eval() -> list[dict]:
        params = average_fn(state.opt_state, state.params) if averaging else state.params
        if not vmapped:
            return [evaluate(members[0].task, lambda p, b: eval_fn(p, b, None, None),
                             params, eval_batches, put_batch)]
        sums: dict[str, np.ndarray] = {}
        for batch in eval_batches:
            out = jax.device_get(eval_fn(params, put_batch(batch), rng_states, consts))
            for k, v in out.items():
                sums[k] = sums[k] + np.asarray(v) if k in sums else np.asarray(v)
        return [m.task.summarize({k: v[m.index] for k, v in sums.items()}) for m in members]

    def member_state(m: _Member) -> TrainState:
        return _member(state, m.index) if vmapped else state

    def eval_model(m: _Member, averaged: bool = True) -> nnx.Module:
        """The member's eval-mode model, at the weights that are evaluated (NT-ASGD's
        average) or, with ``averaged=False``, at the SGD iterate; with N processes on host
        copies of the replicated parameters, so that work only process 0 does (hooks,
        reports) runs no collective."""
        pick = (lambda t: _member(t, m.index)) if vmapped else (lambda t: t)
        params = distributed.to_host(pick(state.params))
        if averaged and averaging:
            params = averaged_params(distributed.to_host(pick(state.opt_state)), params)
        return nnx.merge(graphdef_eval, params, pick(rng_states), pick(consts))

    def save(m: _Member, step: int, data_state: dict, eval_metrics: dict | None = None) -> None:
        meta = {"step": step, "data_state": data_state, "seed": m.config.seed}
        metrics = None
        if eval_metrics:
            metrics = {f"eval/{k}": v for k, v in eval_metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
        m.ckpt.save(step, _on_disk(member_state(m), wrapped), meta, metrics)

    def diverged(m: _Member, step: int, loss: float, finite: bool) -> None:
        # Nothing of this step is saved: the checkpoints on disk hold finite parameters.
        what = f"non-finite loss ({loss})" if not math.isfinite(loss) else \
            "non-finite parameters after the update"
        good = m.ckpt.latest_step()
        who = f" (vmapped member {m.index}, seed {m.config.seed})" if vmapped else ""
        kept = (f"The last good checkpoint (step {good}) in {m.workdir.checkpoint_dir} is kept"
                if good is not None else "No checkpoint was saved before it")
        m.failed = (f"{what} at step {step}{who}. {kept}. Lower optim.lr, enable optim.clip, "
                    f"or check the data.")
        if main:
            m.workdir.record_failure(m.failed, step=step, kind="non_finite",
                                     last_good_step=good)

    # 4. The loop. Steps are dispatched without waiting for the device: the metrics of
    # each step stay on the device until a sync point (a log, eval, hook or checkpoint
    # step, a stop, the last step) fetches them all, checks them step by step for
    # non-finite values in order (so the first bad step is named), and logs. Nothing is
    # saved before that check, so every checkpoint on disk holds finite parameters.
    drawn = [start]

    def produce():
        drawn[0] += 1
        raw = [next(m.data) for m in members]
        batch = _stack_batches(raw, drawn[0]) if vmapped else raw[0]
        return raw, put_batch(batch), [m.data.state_dict() for m in members]

    for m in members:
        m.writer = MetricWriter(m.workdir, tensorboard=tc.tensorboard) if main else _NoWriter()
    bar = Progress(total, initial=start, enabled=progress if main else False)
    t_last, steps_since = time.perf_counter(), 0
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
    prefetch = Prefetcher(produce, int(tc.get("prefetch", 0)))

    def sync(step: int) -> dict | None:
        """Fetches the pending metrics; returns the last step's host metrics (None if
        every member has failed)."""
        fetched = jax.device_get([mt for _, mt in pending])
        last = None
        for (s, _), mt in zip(pending, fetched):
            for m in members:
                if m.failed is None:
                    row = {k: (v[m.index] if vmapped else v) for k, v in mt.items()}
                    loss, finite = float(row["loss"]), bool(row["params_finite"])
                    if not (math.isfinite(loss) and finite):
                        diverged(m, s, loss, finite)
            last = mt
        pending.clear()
        return last if any(m.failed is None for m in members) else None

    try:
        with _Stop() as stop:
            for step in range(start + 1, total + 1):
                batches, device_batch, data_states = next(prefetch)
                state, metrics = step_fn(state, device_batch, rngs, rng_states, consts)
                pending.append((step, metrics))
                steps_since += 1
                bar.update(1)
                is_log = step % tc.log_every == 0 or step == total
                did_eval = step % tc.eval_every == 0 or step == total
                # Read once per step: a signal that lands after this line is seen at the
                # next step, never between the save decision and the exit (which would
                # leave the last logged step without its checkpoint).
                stopping = stop.requested
                is_save = step % tc.checkpoint_every == 0 or step == total or stopping
                hooks_now = [h for h in hooks if h.every and step % h.every == 0]
                if not (is_log or did_eval or is_save or hooks_now):
                    continue
                metrics = sync(step)
                if metrics is None:
                    break
                live = [m for m in members if m.failed is None]
                if is_log:
                    now = time.perf_counter()
                    sps = steps_since / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    for m in live:
                        row = {k: (v[m.index] if vmapped else v) for k, v in metrics.items()
                               if k != "params_finite"}
                        row.update(steps_per_sec=sps, lr=float(m.schedule(step - 1)))
                        m.writer.write(step, "train", row)
                    bar.set_loss(float(np.mean([
                        (metrics["loss"][m.index] if vmapped else metrics["loss"])
                        for m in live])))
                # Hooks measure training (gradient flow through the weights being trained):
                # the SGD iterate, not NT-ASGD's average.
                for hook in hooks_now:
                    for m, b in zip(members, batches):
                        if m.failed is None and main:
                            m.writer.write(step, hook.split,
                                           hook.fn(eval_model(m, averaged=False), m.task, b))
                if did_eval:
                    evals = run_eval()
                    for m, ev in zip(members, evals):
                        if m.failed is None:
                            m.last_eval = ev
                            m.writer.write(step, "eval", ev)
                    if observing:
                        state = observe(state, evals)
                if is_save:
                    for m in live:
                        save(m, step, data_states[m.index], m.last_eval if did_eval else None)
                if stopping:
                    name = signal.Signals(stop.signal).name
                    log.warning("%s: saved a checkpoint at step %d in %s; run the same command "
                                "again to resume", name, step,
                                ", ".join(str(m.workdir.path) for m in live))
                    raise SystemExit(128 + stop.signal)
    finally:
        prefetch.close()
        bar.close()
        for m in members:
            if m.writer is not None:
                m.writer.close()

    # 5. The final evaluation (of the last step, what train.steps asked for; the best
    # checkpoint's step is recorded beside it), results and plots, per member.
    finals: list[dict | None] = []
    for m in members:
        if m.failed is not None:
            m.ckpt.close()
            finals.append(None)
            continue
        if m.last_eval is None:
            m.last_eval = run_eval()[m.index]
        final = dict(m.last_eval)
        if not main:  # process 0 reports and writes; the others are done
            m.ckpt.close()
            finals.append(final)
            continue
        final.update(m.task.final_report(eval_model(m), m.workdir.path))
        extra = {"mode": "vmap", "members": K} if vmapped else {}
        warnings = quality_warnings(m.task, final, m.workdir)
        for w in warnings:
            log.warning("%s: %s", m.workdir.path, w)
        if warnings:
            extra["warnings"] = warnings
        m.workdir.clear_failure()
        m.workdir.write_results(step=total, best_step=m.ckpt.best_step(), eval_metrics=final,
                                **extra)
        if tc.plots:
            plot_curves(m.workdir)
        m.ckpt.close()
        finals.append(final)
    if not vmapped and members[0].failed is not None:
        raise NonFiniteLossError(members[0].failed)
    return finals
