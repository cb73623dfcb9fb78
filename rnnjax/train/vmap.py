"""Train K runs that differ only in ``seed`` (and ``optim.lr``) as one vmapped program.

Small recurrent models leave a CPU mostly idle between tiny matmuls; stacking K
seeds on a leading axis and ``jax.vmap``-ing the trainer's own step
(:func:`rnnjax.train.trainer.make_train_step`) turns K small programs into one
wider one. Each member is exactly the run ``train_and_evaluate`` would do:

* its model is built from its own config (``build(config_k)``: params from
  ``seed_k``), split and stacked with the others;
* its data come from its own task's ``train_iterator(batch_size, seed_k)``, and
  its fixed eval set from its own task; the K batches of a step are stacked on
  a leading axis, so every member sees its own data order;
* its dropout keys are ``fold_in(PRNGKey(seed_k), step)`` as in the trainer;
* members with different ``optim.lr`` share one optimiser built at ``lr = 1``
  whose updates are scaled by each member's lr (kept in the optimiser state).
  That is exact for every optax optimiser whose update is ``-lr * direction``
  (adam, adamw, sgd, rmsprop, lion, ...) and every schedule in
  :mod:`rnnjax.train.optim` (all linear in ``lr``; checked at start).

Each member's workdir gets ``config.json``, ``metrics.jsonl``, ``results.json``
(``"mode": "vmap"``), plots and ONE checkpoint, at the last step (so ``rnnjax
eval``/``diagnose``/``decode`` work on it, and a longer normal run can continue
from it). There are no intermediate checkpoints: an interrupted vmapped run is
not resumable; run again, it starts from step 0 (the old ``metrics.jsonl`` is
replaced). A member whose loss becomes non-finite
is recorded in its ``failed.json`` and the others go on (vmapped members never
mix). Batches whose shapes differ between members at the same step (length
bucketing) cannot be stacked: that is a ValueError; run those without vmap.

Run from the command line by :mod:`rnnjax.sweep` as
``python -m rnnjax.train.vmap group.json`` (``{"members": [{"spec", "overrides",
"workdir"}, ...]}``). This module never imports the CLI or the sweep.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rnnjax.tasks.base import build
from rnnjax.train.metrics import MetricWriter, plot_curves
from rnnjax.train.optim import make_optimizer, make_schedule
from rnnjax.train.state import create_train_state
from rnnjax.train.steps import make_eval_step, make_train_step
from rnnjax.train.workdir import json_default as _json_default

log = logging.getLogger("rnnjax")

#: The config keys vmapped members may differ in.
MEMBER_KEYS = ("seed", "optim.lr")


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
        raise ValueError("train_vmapped needs at least one config")
    ref = _flat(json.loads(configs[0].to_json_best_effort()))
    for i, c in enumerate(configs[1:], 1):
        other = _flat(json.loads(c.to_json_best_effort()))
        diff = sorted(k for k in set(ref) | set(other)
                      if k not in MEMBER_KEYS and ref.get(k) != other.get(k))
        if diff:
            raise ValueError(f"vmapped members may differ only in {list(MEMBER_KEYS)}; member "
                             f"{i} also differs in {diff}. Run them as separate trials.")


def scale_by_member_lr(inner: optax.GradientTransformation,
                       lr: float) -> optax.GradientTransformation:
    """``inner`` (built at lr = 1) with its updates times ``lr``, held in the state.

    Keeping ``lr`` in the optimiser state is what lets ``vmap`` give every member
    its own learning rate through one shared transformation.
    """

    def init(params):
        return {"inner": inner.init(params), "lr": jnp.asarray(lr, jnp.float32)}

    def update(updates, state, params=None):
        upd, inner_state = inner.update(updates, state["inner"], params)
        upd = jax.tree.map(lambda u: u * state["lr"].astype(u.dtype), upd)
        return upd, {"inner": inner_state, "lr": state["lr"]}

    return optax.GradientTransformation(init, update)


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


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _stack_batches(batches: list[dict], step: int) -> dict[str, jax.Array]:
    ref = batches[0]
    for i, b in enumerate(batches[1:], 1):
        shapes = {k: np.shape(v) for k, v in b.items()}
        want = {k: np.shape(v) for k, v in ref.items()}
        if shapes != want:
            raise ValueError(f"vmapped members need batches of one shape; at step {step} "
                             f"member {i} has {shapes}, member 0 {want} (length bucketing "
                             f"gives each member its own T). Set data.bucket=False or run "
                             f"without --vmap-seeds.")
    return {k: jnp.asarray(np.stack([np.asarray(b[k]) for b in batches])) for k in ref}


def _member(tree, k: int):
    return jax.tree.map(lambda a: a[k], tree)


class VmapUnsupported(ValueError):
    """The members' programs differ (the task reads the seed inside the step)."""


class _Prepend:
    """An iterator that yields ``first`` and then the rest of ``it``."""

    def __init__(self, first, it):
        self.first, self.it = first, it

    def __next__(self):
        if self.first is not None:
            out, self.first = self.first, None
            return out
        return next(self.it)


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


def _prepare_workdir(workdir: Path, config) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
        json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True))
    # Not resumable: a new attempt replaces the last one's files.
    for name in ("metrics.jsonl", "results.json", "failed.json"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)


def train_vmapped(configs: Sequence[ml_collections.ConfigDict],
                  workdirs: Sequence[str | Path]) -> list[dict | None]:
    """Trains every config (differing only in seed / optim.lr) at once; see the module doc.

    Returns each member's final eval metrics, or None for a member that diverged
    (its ``failed.json`` says at which step).
    """
    check_members(configs)
    if len(configs) != len(workdirs):
        raise ValueError(f"got {len(configs)} configs but {len(workdirs)} workdirs")
    workdirs = [Path(w) for w in workdirs]
    if len(set(workdirs)) != len(workdirs):
        raise ValueError("every vmapped member needs its own workdir")
    K = len(configs)
    cfg0 = configs[0]
    tc = cfg0.train
    total = int(tc.steps)

    # Tasks, models and workdirs, one per member.
    tasks, models = zip(*(build(c, w) for c, w in zip(configs, workdirs)))
    parts = []
    for m in models:
        m.train()
        parts.append(nnx.split(m, nnx.Param, nnx.RngState, ...))
    graphdef_train = parts[0][0]
    models[0].eval()
    graphdef_eval = nnx.split(models[0], nnx.Param, nnx.RngState, ...)[0]

    # Optimiser: the trainer's own; with differing lrs, built at lr=1 and scaled.
    lrs = [float(c.optim.lr) for c in configs]
    if len(set(lrs)) == 1:
        clip_tx, opt_tx = make_optimizer(cfg0.optim, total)
        member_tx = [opt_tx] * K
    else:
        _check_linear_schedule(cfg0.optim, total)
        unit = ml_collections.ConfigDict(cfg0.optim.to_dict())
        unit.lr = 1.0
        clip_tx, inner = make_optimizer(unit, total)
        member_tx = [scale_by_member_lr(inner, lr) for lr in lrs]
        opt_tx = member_tx[0]  # same update function; the lr lives in the state

    states = [create_train_state(p, tx, t.init_task_state(m, tc.batch_size))
              for (_, p, _, _), tx, t, m in zip(parts, member_tx, tasks, models)]
    state = _stack(states)
    rng_states = _stack([p[2] for p in parts])
    consts = _stack([p[3] for p in parts])
    rngs = jnp.stack([jax.random.PRNGKey(c.seed) for c in configs])

    # The trainer's own step and eval functions, per member task (checked equal below).
    def member_step_of(task):
        def member_step(state, batch, rng, rng_state, consts):
            step = make_train_step(task, graphdef_train, rng_state, consts, clip_tx, opt_tx)
            return step(state, batch, rng)
        return member_step

    def member_eval_of(task):
        def member_eval(params, batch, rng_state, consts):
            return make_eval_step(task, graphdef_eval, rng_state, consts)(params, batch)
        return member_eval

    iters = [t.train_iterator(tc.batch_size, c.seed) for t, c in zip(tasks, configs)]
    eval_sets = [t.eval_batches(tc.eval_batch_size) for t in tasks]
    if len({len(e) for e in eval_sets}) != 1:
        raise ValueError(f"vmapped members have eval sets of different sizes "
                         f"{[len(e) for e in eval_sets]}")
    # One traced program serves every member, so it must not depend on which member's
    # task built it (a loss that draws coins from PRNGKey(config.seed) would).
    data_iters = list(iters)  # their state_dict() goes into the final checkpoints
    first = next(iters[0])
    iters[0] = _Prepend(first, iters[0])
    _check_same_program([member_step_of(t) for t in tasks],
                        (_member(state, 0), first, rngs[0], _member(rng_states, 0),
                         _member(consts, 0)), "train step")
    _check_same_program([member_eval_of(t) for t in tasks],
                        (_member(state, 0).params, eval_sets[0][0],
                         _member(rng_states, 0), _member(consts, 0)), "eval step")
    member_step, member_eval = member_step_of(tasks[0]), member_eval_of(tasks[0])
    for task, c, w in zip(tasks, configs, workdirs):
        _prepare_workdir(w, c)
        task.save_artifacts(w)

    vstep = jax.jit(jax.vmap(member_step), donate_argnums=(0,))
    veval = jax.jit(jax.vmap(member_eval))
    eval_batches = [_stack_batches(list(bs), 0) for bs in zip(*eval_sets)]
    schedules = [make_schedule(c.optim, total) for c in configs]
    writers = [MetricWriter(w, tensorboard=tc.tensorboard) for w in workdirs]
    failed: dict[int, str] = {}

    def evaluate(params) -> list[dict]:
        sums: dict[str, np.ndarray] = {}
        for batch in eval_batches:
            out = jax.device_get(veval(params, batch, rng_states, consts))
            for k, v in out.items():
                sums[k] = sums[k] + np.asarray(v) if k in sums else np.asarray(v)
        return [t.summarize({k: v[i] for k, v in sums.items()}) for i, t in enumerate(tasks)]

    last_eval: list[dict] | None = None
    t_last, steps_since = time.perf_counter(), 0
    try:
        for step in range(1, total + 1):
            batch = _stack_batches([next(it) for it in iters], step)
            state, metrics = vstep(state, batch, rngs, rng_states, consts)
            metrics = jax.device_get(metrics)
            steps_since += 1
            for i in range(K):
                loss = float(metrics["loss"][i])
                if i not in failed and not math.isfinite(loss):
                    failed[i] = (f"non-finite loss ({loss}) at step {step} (vmapped member "
                                 f"{i}, seed {configs[i].seed}); lower optim.lr or enable "
                                 f"optim.clip")
            if step % tc.log_every == 0 or step == total:
                now = time.perf_counter()
                sps = steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                for i in range(K):
                    if i not in failed:
                        row = {k: v[i] for k, v in metrics.items()}
                        row.update(steps_per_sec=sps, lr=float(schedules[i](step - 1)))
                        writers[i].write(step, "train", row)
            if step % tc.eval_every == 0 or step == total:
                last_eval = evaluate(state.params)
                for i in range(K):
                    if i not in failed:
                        writers[i].write(step, "eval", last_eval[i])
            if len(failed) == K:
                break
    finally:
        for w in writers:
            w.close()

    finals: list[dict | None] = []
    for i in range(K):
        if i in failed:
            (workdirs[i] / "failed.json").write_text(json.dumps(
                {"time": time.time(), "error": failed[i], "mode": "vmap"}, indent=2))
            finals.append(None)
            continue
        final = dict(last_eval[i])
        model = nnx.merge(graphdef_eval, _member(state.params, i),
                          _member(rng_states, i), _member(consts, i))
        final.update(tasks[i].final_report(model, workdirs[i]))
        _save_final(workdirs[i], configs[i], tasks[i], _member(state, i), len(set(lrs)) > 1,
                    data_iters[i], last_eval[i], total)
        results = {"status": "done", "step": total, "best_step": total, "mode": "vmap",
                   "eval": final}
        (workdirs[i] / "results.json").write_text(
            json.dumps(results, indent=2, default=_json_default))
        if tc.plots:
            plot_curves(workdirs[i])
        finals.append(final)
    return finals


def _save_final(workdir: Path, config, task, state, wrapped: bool, data_iter, eval_metrics,
                step: int) -> None:
    """One checkpoint at the end, in the trainer's layout, so eval/diagnose/decode work.

    With per-member learning rates the optimiser state is the inner (lr = 1) one:
    Adam-type states do not depend on lr, so the trainer can restore it as its own.
    """
    from rnnjax.train.checkpoint import Checkpointer

    if wrapped:
        state = state.replace(opt_state=state.opt_state["inner"])
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                        best_metric=f"eval/{task.best_metric}", best_mode=task.best_mode)
    metrics = {f"eval/{k}": v for k, v in eval_metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ckpt.save(step, state, {"step": step, "data_state": data_iter.state_dict(),
                            "seed": config.seed}, metrics)
    ckpt.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m rnnjax.train.vmap group.json``: the sweep's vmapped-group entry point."""
    from rnnjax.configlib import load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m rnnjax.train.vmap GROUP.json", file=sys.stderr)
        return 2
    group = json.loads(Path(argv[0]).read_text())
    members = group["members"]
    try:
        configs = [load_config(m["spec"], m.get("overrides", {})) for m in members]
        try:
            train_vmapped(configs, [m["workdir"] for m in members])
        except VmapUnsupported as e:
            # Still correct, just not vmapped: the members run one after another.
            from rnnjax.train.trainer import train_and_evaluate

            print(f"rnnjax.train.vmap: {e}\nrunning the members one by one", file=sys.stderr)
            for c, m in zip(configs, members):
                train_and_evaluate(c, m["workdir"], progress=False)
    except Exception:
        # Every member fails together here (a bad config, a shape mismatch).
        tb = traceback.format_exc()
        for m in members:
            Path(m["workdir"]).mkdir(parents=True, exist_ok=True)
            (Path(m["workdir"]) / "failed.json").write_text(json.dumps(
                {"time": time.time(), "error": tb.strip().splitlines()[-1], "traceback": tb,
                 "mode": "vmap"}, indent=2))
        print(tb, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
