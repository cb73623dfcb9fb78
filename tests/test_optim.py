"""Optimisers, schedules, weight decay and clipping built from ``config.optim``.

Expected values are written out from the formulas in ``rnnjax.train.optim``'s
docstring (and numpy for the clipping rules), not from optax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rnnjax.config_schema import base_config
from rnnjax.train.optim import CLIPS, SCHEDULES, make_clip, make_optimizer, make_schedule


def _optim(**fields) -> ml_collections.ConfigDict:
    cfg = base_config().optim
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def test_constant_schedule():
    sched = make_schedule(_optim(lr=3e-4, schedule="constant"), 1000)
    for step in (0, 1, 500, 999, 5000):
        assert float(sched(step)) == pytest.approx(3e-4, rel=1e-6)


def test_warmup_cosine_schedule():
    lr, warm, total, end = 2e-3, 100, 1100, 0.1
    sched = make_schedule(_optim(lr=lr, schedule="warmup_cosine", warmup_steps=warm,
                                 end_lr_factor=end), total)

    def expected(step):
        if step < warm:  # linear from 0
            return lr * step / warm
        frac = min(step - warm, total - warm) / (total - warm)
        return lr * end + (lr - lr * end) * 0.5 * (1 + math.cos(math.pi * frac))

    for step in (0, 1, 50, 99, 100, 101, 350, 600, 1000, 1099, 1100, 2000):
        assert float(sched(step)) == pytest.approx(expected(step), rel=1e-5, abs=1e-10), step
    assert float(sched(warm)) == pytest.approx(lr, rel=1e-6)  # the peak
    assert float(sched(total)) == pytest.approx(lr * end, rel=1e-5)  # the end
    assert float(sched((warm + total) // 2)) == pytest.approx(lr * (1 + end) / 2, rel=1e-5)


def test_warmup_cosine_with_warmup_longer_than_the_run():
    # A smoke run (4 steps) of a config with 100 warmup steps: still a valid, rising schedule.
    sched = make_schedule(_optim(lr=1e-2, schedule="warmup_cosine", warmup_steps=100), 4)
    values = [float(sched(s)) for s in range(5)]
    assert values == pytest.approx([1e-2 * s / 100 for s in range(5)], rel=1e-5)


def test_exponential_schedule():
    lr, rate, every = 1e-2, 0.5, 200
    sched = make_schedule(_optim(lr=lr, schedule="exponential", decay_rate=rate,
                                 decay_steps=every), 5000)
    for k in range(6):
        assert float(sched(k * every)) == pytest.approx(lr * rate**k, rel=1e-5), k
    # The decay is smooth between its documented points.
    assert lr * rate < float(sched(every // 2)) < lr


def test_exponential_schedule_starts_after_warmup_steps():
    sched = make_schedule(_optim(lr=1.0, schedule="exponential", decay_rate=0.1, decay_steps=10,
                                 warmup_steps=30), 1000)
    assert float(sched(0)) == float(sched(30)) == pytest.approx(1.0)
    assert float(sched(40)) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("field,value,known", [
    ("schedule", "cosine", SCHEDULES),
    ("clip", "norm", CLIPS),
])
def test_unknown_schedule_or_clip_lists_known(field, value, known):
    with pytest.raises(ValueError) as e:
        make_optimizer(_optim(**{field: value}), 100)
    msg = str(e.value)
    assert repr(value) in msg and all(k in msg for k in known)


def test_unknown_optimizer_lists_known_and_suggests():
    with pytest.raises(ValueError) as e:
        make_optimizer(_optim(name="adamm"), 100)
    msg = str(e.value)
    assert "'adamm'" in msg and "sgd" in msg and "did you mean ['adam'" in msg
    with pytest.raises(ValueError, match="_private"):
        make_optimizer(_optim(name="_private"), 100)


PARAMS = {"w": jnp.asarray(np.arange(1.0, 7.0).reshape(2, 3), jnp.float32),
          "b": jnp.asarray([1.0, -2.0, 3.0], jnp.float32),
          "scale": jnp.asarray(5.0, jnp.float32)}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_is_masked_to_matrices(name):
    # Zero gradients isolate the decay term: update = -lr * wd * w for matrices only.
    lr, wd = 0.1, 0.5
    _, tx = make_optimizer(_optim(name=name, lr=lr, weight_decay=wd), 10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["w"], -lr * wd * np.asarray(PARAMS["w"]), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], 0.0)
    np.testing.assert_array_equal(updates["scale"], 0.0)


def test_l2_decay_enters_the_gradient_of_other_optimizers():
    # adam with weight_decay adds wd * w to the gradient before adam: matrices move, 1-D not.
    _, tx = make_optimizer(_optim(name="adam", lr=0.1, weight_decay=0.5), 10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    # adam's first step is -lr * g / (|g| + eps) = -lr * sign(g)
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones((2, 3)), rtol=1e-5)
    np.testing.assert_array_equal(updates["b"], 0.0)


def test_no_weight_decay_by_default():
    _, tx = make_optimizer(_optim(name="sgd", lr=0.1), 10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))


def test_optimizer_kwargs_are_passed():
    cfg = _optim(name="sgd", lr=1.0)
    cfg.kwargs = ml_collections.ConfigDict({"momentum": 0.9})
    _, tx = make_optimizer(cfg, 10)
    g = {"x": jnp.ones(2)}
    state = tx.init(g)
    u1, state = tx.update(g, state)
    u2, state = tx.update(g, state)
    np.testing.assert_allclose(u1["x"], -1.0)
    np.testing.assert_allclose(u2["x"], -1.9, rtol=1e-6)  # momentum: 1 + 0.9


GRADS = {"w": jnp.asarray([[3.0, 0.01, -4.0], [4.0, 0.02, 3.0]], jnp.float32),
         "b": jnp.asarray([30.0, 40.0, 0.0], jnp.float32),
         "scale": jnp.asarray(-7.0, jnp.float32)}


def test_global_norm_clip():
    clip = make_clip(_optim(clip="global_norm", clip_value=2.0))
    g = {k: np.asarray(v, np.float64) for k, v in GRADS.items()}
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    out, _ = clip.update(GRADS, clip.init(PARAMS), PARAMS)
    for k in g:
        np.testing.assert_allclose(out[k], g[k] * 2.0 / norm, rtol=1e-5)


def test_value_clip_is_per_element():
    clip = make_clip(_optim(clip="value", clip_value=3.5))
    out, _ = clip.update(GRADS, clip.init(PARAMS), PARAMS)
    for k in GRADS:
        np.testing.assert_array_equal(out[k], np.clip(np.asarray(GRADS[k]), -3.5, 3.5))


def test_adaptive_clip_is_unitwise_relative_to_the_params():
    # Brock et al. 2021: each unit's gradient norm is capped at ratio * max(|param unit|, 1e-3);
    # a unit of a (in, out) matrix is one output column, a vector or a scalar is one unit.
    ratio = 0.5
    clip = make_clip(_optim(clip="adaptive", clip_value=ratio))
    out, _ = clip.update(GRADS, clip.init(PARAMS), PARAMS)

    def reference(g, p):
        g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
        if g.ndim == 2:
            gn = np.linalg.norm(g, axis=0, keepdims=True)
            pn = np.linalg.norm(p, axis=0, keepdims=True)
        else:
            gn, pn = np.linalg.norm(g.ravel()), np.linalg.norm(p.ravel())
        cap = ratio * np.maximum(pn, 1e-3)
        return np.where(gn > cap, g * cap / np.maximum(gn, 1e-30), g)

    for k in GRADS:
        np.testing.assert_allclose(out[k], reference(GRADS[k], PARAMS[k]), rtol=1e-5, atol=1e-7)
    # Column 1 of w (tiny gradient) is untouched; column 0 is scaled down.
    np.testing.assert_array_equal(out["w"][:, 1], GRADS["w"][:, 1])
    assert float(jnp.linalg.norm(out["w"][:, 0])) < 5.0


def test_adaptive_clip_runs_in_a_jitted_optimizer_loop():
    # Minimise |w - 1|^2 with clipping in front of adam, as the trainer composes them.
    clip, tx = make_optimizer(_optim(name="adam", lr=0.05, clip="adaptive", clip_value=0.1), 200)
    params = {"w": jnp.full((3, 2), 0.5), "b": jnp.zeros(2)}

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum((p["b"] - 1) ** 2))(
            params)
        clipped, _ = clip.update(grads, clip.init(params), params)
        updates, opt_state = tx.update(clipped, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(150):
        params, opt_state = step(params, opt_state)
    np.testing.assert_allclose(params["w"], 1.0, atol=0.05)
    np.testing.assert_allclose(params["b"], 1.0, atol=0.05)
