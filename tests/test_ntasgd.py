"""NT-ASGD (rnnjax.train.optim.nt_asgd): the plain SGD iterate before the trigger, a numpy
running mean of the iterates after it, Merity et al.'s non-monotone rule against a Python
transcription, and an exact round trip through the Checkpointer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnnjax.config_schema import base_config
from rnnjax.train.checkpoint import Checkpointer
from rnnjax.train.optim import (
    NTASGDState,
    averaged_params,
    make_optimizer,
    nt_asgd,
    observe_metric,
)
from rnnjax.train.state import TrainState, create_train_state

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
