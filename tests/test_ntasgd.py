"""NT-ASGD (rnnjax.train.optim.nt_asgd): the plain SGD iterate before the trigger, a numpy
running mean of the iterates after it, Merity et al.'s non-monotone rule against a Python
transcription, and an exact round trip through the Checkpointer. Through the trainer: the
eval monitor against the same transcription of the logged evaluations, every evaluation
(and ``rnnjax eval``) against the model at a numpy mean of the checkpoints' params, resume
against an uninterrupted run (bitwise), and the loss monitor against the logged losses."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import (
    Killed,
    assert_bitwise_equal,
    checkpoint_steps,
    config,
    crash_at_step,
    flat,
    last_rows_by_step,
    restored_params,
    results,
    train,
)
from flax import nnx

from rnnjax import cli
from rnnjax.config_schema import base_config
from rnnjax.inference import run_eval
from rnnjax.tasks.base import build, get_task
from rnnjax.train.checkpoint import Checkpointer
from rnnjax.train.optim import (
    NTASGDState,
    averaged_params,
    make_optimizer,
    nt_asgd,
    observe_metric,
)
from rnnjax.train.state import TrainState, create_train_state
from rnnjax.train.steps import evaluate, make_eval_step
from rnnjax.train.trainer import train_members

LR = 0.1


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(5, 5)).astype(np.float32)
    targets = rng.normal(size=(40, 5)).astype(np.float32)  # one target per step: noisy SGD
    return A, targets


def _grad_np(p, A, t):
    # loss = 0.5 * |A p - t|^2 -> grad = A^T (A p - t)
    return A.T @ (A @ p - t)


def _run(tx, steps, A, targets):
    params = {"w": jnp.zeros(5, jnp.float32)}
    state = tx.init(params)
    upd = jax.jit(tx.update)
    iterates, avgs = [], []
    for k in range(steps):
        g = {"w": jnp.asarray(_grad_np(np.asarray(params["w"]), A, targets[k]))}
        u, state = upd(g, state, params)
        params = optax.apply_updates(params, u)
        iterates.append(np.asarray(params["w"], np.float64))
        avgs.append(np.asarray(averaged_params(state, params)["w"], np.float64))
    return params, state, iterates, avgs


def test_before_the_trigger_it_is_the_plain_sgd_iterate():
    A, targets = _problem()
    A = A / 4  # a stable step size
    params, state, iterates, avgs = _run(nt_asgd(LR, monitor="eval"), 20, A, targets)
    p = np.zeros(5, np.float32)
    for k in range(20):
        p = (p - LR * _grad_np(p, A, targets[k])).astype(np.float32)
        np.testing.assert_allclose(iterates[k], p, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(avgs[k], iterates[k])  # bitwise: no averaging yet
    assert not bool(state.triggered) and int(state.trigger_step) == -1


@pytest.mark.parametrize("start", [1, 7])
def test_after_the_trigger_the_average_is_a_numpy_running_mean(start):
    A, targets = _problem(1)
    A = A / 4
    params, state, iterates, avgs = _run(nt_asgd(LR, monitor="eval", start_step=start), 30, A,
                                         targets)
    assert bool(state.triggered) and int(state.trigger_step) == start - 1
    first = start - 1  # the iterate after the triggering update is the first averaged
    for k in range(30):
        if k < first:
            np.testing.assert_array_equal(avgs[k], iterates[k])
        else:
            want = np.mean(np.stack(iterates[first:k + 1]), axis=0)
            np.testing.assert_allclose(avgs[k], want, rtol=1e-5, atol=1e-6)
    # The SGD iterate itself is untouched by the averaging.
    p = np.zeros(5, np.float32)
    for k in range(30):
        p = (p - LR * _grad_np(p, A, targets[k])).astype(np.float32)
    np.testing.assert_allclose(iterates[-1], p, rtol=1e-5, atol=1e-6)


def _merity_trigger(values, nonmono):
    """The index of the first log that triggers, transcribed from the AWD-LSTM main.py."""
    logs = []
    for i, v in enumerate(values):
        if len(logs) > nonmono and v > min(logs[:-nonmono]):
            return i
        logs.append(v)
    return None


@pytest.mark.parametrize("seed", range(6))
def test_eval_monitor_follows_merity_rule(seed):
    rng = np.random.default_rng(seed)
    nonmono = int(rng.integers(1, 5))
    values = list(np.round(3.0 - 0.1 * np.arange(25) + rng.normal(0, 0.3, 25), 3))
    want = _merity_trigger(values, nonmono)
    tx = nt_asgd(LR, nonmono=nonmono, monitor="eval")
    state = tx.init({"w": jnp.zeros(3)})
    got = None
    for i, v in enumerate(values):
        state = observe_metric(state, v)
        if got is None and bool(state.triggered):
            got = i
    assert got == want, (values, nonmono)


def test_an_observed_trigger_averages_from_the_next_update_on():
    """observe_metric fires between updates: the weights just evaluated are not averaged,
    the first averaged iterate is the next update's result (Merity et al. evaluate, switch
    to ASGD, then average the steps that follow), as for a trigger inside an update."""
    A, targets = _problem(3)
    A = A / 4
    tx = nt_asgd(LR, nonmono=1, monitor="eval")
    params = {"w": jnp.zeros(5, jnp.float32)}
    state = tx.init(params)
    upd = jax.jit(tx.update)
    iterates = []
    for k in range(12):
        if k == 5:
            for v in (2.0, 3.0, 2.5):  # the third log is above min(logs[:-1]) = 2.0
                state = observe_metric(state, v)
            assert bool(state.triggered) and int(state.trigger_step) == 5
            np.testing.assert_array_equal(np.asarray(averaged_params(state, params)["w"]),
                                          np.asarray(params["w"]))
        g = {"w": jnp.asarray(_grad_np(np.asarray(params["w"]), A, targets[k]))}
        u, state = upd(g, state, params)
        params = optax.apply_updates(params, u)
        iterates.append(np.asarray(params["w"], np.float64))
        got = np.asarray(averaged_params(state, params)["w"], np.float64)
        want = np.mean(np.stack(iterates[5:]), axis=0) if k >= 5 else iterates[k]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(k))


def test_grad_norm_monitor_logs_interval_means_and_triggers_by_the_rule():
    # Gradient norms per step; interval 3 -> logs are the means of each block of 3.
    norms = [5, 5, 5, 4, 4, 4, 3, 3, 3, 3.5, 3.5, 3.5, 3.2, 3.2, 3.2, 3.4, 3.4, 3.4]
    interval, nonmono = 3, 2
    logs = [np.mean(norms[i:i + interval]) for i in range(0, len(norms), interval)]
    want_log = _merity_trigger(logs, nonmono)
    assert want_log is not None
    tx = nt_asgd(LR, nonmono=nonmono, interval=interval, monitor="grad_norm")
    params = {"w": jnp.zeros(4)}
    state = tx.init(params)
    fired_at = None
    for k, n in enumerate(norms):
        g = {"w": jnp.full(4, n / 2.0)}  # global norm = n
        _, state = tx.update(g, state, params)
        if fired_at is None and bool(state.triggered):
            fired_at = k
    assert fired_at == (want_log + 1) * interval - 1
    assert int(state.trigger_step) == fired_at


def test_loss_monitor_needs_the_value():
    tx = nt_asgd(LR, monitor="loss", interval=1)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="value=loss"):
        tx.update({"w": jnp.ones(2)}, state, params)
    _, state = tx.update({"w": jnp.ones(2)}, state, params, value=1.5)
    assert int(state.num_logs) == 1


def test_make_optimizer_builds_it_with_weight_decay_and_finds_the_average():
    cfg = base_config().optim
    cfg.name, cfg.lr, cfg.weight_decay = "nt_asgd", 0.5, 1e-3
    cfg.kwargs = {"monitor": "eval", "start_step": 2}
    _, tx = make_optimizer(cfg, 10)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    state = tx.init(params)
    seen = []
    for _ in range(4):
        u, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, u)
        seen.append(params)
    avg = averaged_params(state, params)  # the NT state sits inside a chain
    want = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *seen[1:])
    for k in params:
        np.testing.assert_allclose(np.asarray(avg[k]), want[k], rtol=1e-6)
    assert averaged_params(optax.adam(1e-3).init(params), params) is params


def test_state_round_trips_through_a_checkpoint_exactly(tmp_path):
    A, targets = _problem(2)
    A = A / 4
    tx = nt_asgd(LR, nonmono=2, interval=2, monitor="grad_norm", start_step=5)
    params = {"w": jnp.zeros(5, jnp.float32)}
    ts = create_train_state(params, tx)
    upd = jax.jit(tx.update)
    for k in range(9):
        g = {"w": jnp.asarray(_grad_np(np.asarray(ts.params["w"]), A, targets[k]))}
        u, opt = upd(g, ts.opt_state, ts.params)
        ts = TrainState(step=ts.step + 1, params=optax.apply_updates(ts.params, u),
                        opt_state=opt, task_state={})
    assert isinstance(ts.opt_state, NTASGDState) and bool(ts.opt_state.triggered)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    ck.save(9, ts, {"step": 9})
    ck.close()
    fresh = create_train_state(params, tx)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    restored, meta = ck.restore(fresh)
    ck.close()
    assert meta["step"] == 9
    a, b = jax.tree.leaves(ts), jax.tree.leaves(restored)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(averaged_params(restored.opt_state,
                                                             restored.params)["w"]),
                                  np.asarray(averaged_params(ts.opt_state, ts.params)["w"]))


# ---------------------------------------------------------------------------
# Through the trainer: evaluation at the average, the eval monitor, resume, inference.
# ---------------------------------------------------------------------------
# A tiny adding run (T=7, H=8) whose eval MSE is noisy at lr 0.5, so with nonmono=1 the
# eval monitor triggers at the third evaluation (step 3) and steps 4-8 are averaged. Every
# step is evaluated and checkpointed, so the reference average is a numpy mean of the
# checkpoints' params.
RUN = ["train.steps=8", "train.eval_every=1", "train.checkpoint_every=1",
       "train.keep_checkpoints=10", "optim.lr=0.5", "model.hidden=8"]
NT = {"optim__name": "nt_asgd", "optim__schedule": "constant",
      "optim__kwargs": {"monitor": "eval", "nonmono": 1}}


def _cfg(*overrides, spec="adding.py:smoke,T=7", **fields):
    return config(spec, *RUN, *overrides, **{**NT, **fields})


def _restore_state(cfg, workdir, step):
    """The whole train state of checkpoint ``step``, restored here without the trainer."""
    task, model = build(cfg, workdir)
    _, opt_tx = make_optimizer(cfg.optim, cfg.train.steps)
    params = nnx.state(model, nnx.Param)
    target = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_tx.init(params),
                  task_state=task.init_task_state(model, cfg.train.batch_size))
    ckpt = Checkpointer(Path(workdir) / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        return ckpt.restore(target, step)[0]
    finally:
        ckpt.close()


def _nt_state(opt_state) -> NTASGDState:
    (s,) = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, NTASGDState))
            if isinstance(n, NTASGDState)]
    return s


def _eval_at(cfg, workdir, params) -> dict:
    """The task's evaluation of the model at ``params`` (an nnx.State of numpy arrays)."""
    task, model = build(cfg, workdir)
    model.eval()
    graphdef, _, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    step = jax.jit(make_eval_step(task, graphdef, rng_state, consts))
    return evaluate(task, step, params, task.eval_batches(cfg.train.eval_batch_size),
                    lambda b: {k: jnp.asarray(v) for k, v in b.items()})


def _mean(trees):
    return jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x, np.float64) for x in xs]),
                                            axis=0).astype(np.float32), *trees)


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nt_asgd")
    cfg = _cfg()
    return cfg, workdir, train(cfg, workdir)


def test_eval_monitor_triggers_by_the_rule_and_evaluations_use_the_average(averaged_run):
    cfg, workdir, final = averaged_run
    total = cfg.train.steps
    evals = last_rows_by_step(workdir, "eval")
    assert sorted(evals) == list(range(1, total + 1))
    losses = [evals[s]["mse"] for s in sorted(evals)]
    first = _merity_trigger(losses, nonmono=1)
    assert first is not None and first + 1 < total, losses  # precondition: it triggered
    trigger = first + 1  # the step of the evaluation that triggered
    nt = _nt_state(_restore_state(cfg, workdir, total)["opt_state"])
    assert bool(nt.triggered) and int(nt.trigger_step) == trigger
    assert int(nt.num_logs) == total  # one log per evaluation, fed by the trainer
    # Every evaluation is that of the model at the SGD iterate until the trigger, then at
    # the numpy mean of the iterates of the steps after it (each checkpoint's params).
    params = {s: _restore_state(cfg, workdir, s)["params"] for s in range(1, total + 1)}
    for s in range(1, total + 1):
        at = params[s] if s <= trigger else _mean([params[k] for k in range(trigger + 1, s + 1)])
        assert evals[s]["mse"] == pytest.approx(_eval_at(cfg, workdir, at)["mse"], rel=1e-5), s
    # The reported final metrics are the average's, and differ from the SGD iterate's.
    want = _eval_at(cfg, workdir, _mean([params[k] for k in range(trigger + 1, total + 1)]))
    raw = _eval_at(cfg, workdir, params[total])
    assert final["mse"] == results(workdir)["eval"]["mse"]
    assert final["mse"] == pytest.approx(want["mse"], rel=1e-5)
    assert abs(final["mse"] - raw["mse"]) > 1e-3 * raw["mse"]


def test_eval_and_inference_restore_the_average(averaged_run, capsys):
    cfg, workdir, final = averaged_run
    total = cfg.train.steps
    trigger = int(_nt_state(_restore_state(cfg, workdir, total)["opt_state"]).trigger_step)
    want = _mean([_restore_state(cfg, workdir, k)["params"] for k in range(trigger + 1,
                                                                           total + 1)])
    got, step = restored_params(workdir, "latest")  # load_for_inference
    assert step == total
    ref = flat(want)
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert cli.main(["eval", "--workdir", str(workdir), "--checkpoint", "latest"]) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["checkpoint_step"] == total
    assert latest["mse"] == pytest.approx(final["mse"], rel=1e-6)
    # The best checkpoint is ranked by, and evaluates to, the averaged evaluations.
    evals = last_rows_by_step(workdir, "eval")
    best = results(workdir)["best_step"]
    assert best == min(evals, key=lambda s: evals[s]["mse"])
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    at_best = json.loads(capsys.readouterr().out)
    assert at_best["checkpoint_step"] == best
    assert at_best["mse"] == pytest.approx(evals[best]["mse"], rel=1e-6)


def test_resume_across_the_trigger_matches_the_uninterrupted_run(averaged_run, tmp_path,
                                                                  monkeypatch):
    """Killed at step 5 with checkpoints every 3 steps: the run resumes from step 3, the
    evaluation that triggered (its observation is in that checkpoint), redoes step 4 and
    ends bitwise equal to the uninterrupted run (checkpointed every step, which changes no
    number)."""
    cfg_ref, ref, ref_final = averaged_run
    cfg = _cfg("train.checkpoint_every=3")
    with monkeypatch.context() as m:
        crash_at_step(m, get_task(cfg.task), 5)
        with pytest.raises(Killed):
            train(cfg, tmp_path)
    assert checkpoint_steps(tmp_path) == [3]
    assert bool(_nt_state(_restore_state(cfg, tmp_path, 3)["opt_state"]).triggered)
    assert train(_cfg("train.checkpoint_every=3"), tmp_path) == ref_final
    assert results(tmp_path)["eval"] == results(ref)["eval"]
    got, want = last_rows_by_step(tmp_path, "eval"), last_rows_by_step(ref, "eval")
    assert [got[s]["mse"] for s in sorted(got)] == [want[s]["mse"] for s in sorted(want)]
    total = cfg.train.steps
    assert_bitwise_equal(flat(_restore_state(cfg, tmp_path, total)),
                         flat(_restore_state(cfg_ref, ref, total)))


def test_loss_monitor_gets_each_members_training_loss(tmp_path):
    """monitor="loss" through the trainer: make_train_step passes value=loss through the
    weight-decay chain and, for vmapped members with their own lr, scale_by_member_lr.
    With interval 1 and nonmono = steps, the criterion's ring holds every step's loss."""
    kwargs = {"monitor": "loss", "interval": 1, "nonmono": 4}
    cfgs = [_cfg("train.steps=4", f"seed={s}", f"optim.lr={lr}", "optim.weight_decay=1e-3",
                 optim__kwargs=kwargs) for s, lr in ((0, 0.5), (1, 0.2))]
    dirs = [tmp_path / "a", tmp_path / "b"]
    finals = train_members(cfgs, dirs, progress=False)
    assert all(f is not None for f in finals)
    for cfg, d in zip(cfgs, dirs):
        nt = _nt_state(_restore_state(cfg, d, 4)["opt_state"])
        losses = [last_rows_by_step(d, "train")[s]["loss"] for s in range(1, 5)]
        assert int(nt.num_logs) == 4
        np.testing.assert_allclose(np.asarray(nt.recent), losses, rtol=1e-6)


def test_vmapped_members_each_observe_their_own_evaluations(tmp_path):
    cfgs = [_cfg(f"seed={s}") for s in (0, 1)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    finals = train_members(cfgs, dirs, progress=False)
    triggers = []
    for cfg, d, final in zip(cfgs, dirs, finals):
        evals = last_rows_by_step(d, "eval")
        first = _merity_trigger([evals[s]["mse"] for s in sorted(evals)], nonmono=1)
        nt = _nt_state(_restore_state(cfg, d, cfg.train.steps)["opt_state"])
        assert first is not None and int(nt.trigger_step) == first + 1
        triggers.append(first + 1)
        # The member's checkpoint restores to the weights its final evaluation saw.
        assert run_eval(d, "latest")["mse"] == pytest.approx(final["mse"], rel=1e-5)
    assert triggers[0] != triggers[1]  # precondition: the members' logs differ
