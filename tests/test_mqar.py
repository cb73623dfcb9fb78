"""The MQAR generator (rnnjax/data/mqar.py): every invariant of Zoology's layout, by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from rnnjax.data import mqar


@pytest.mark.parametrize("T,pairs,V", [(64, 4, 8192), (128, 8, 256), (256, 16, 8192),
                                       (16, 4, 12)])
def test_every_query_answer_is_its_keys_value(T, pairs, V):
    d = mqar.mqar(np.random.default_rng(0), 50, T, pairs, V)
    x, y, m = d["inputs"], d["targets"], d["loss_mask"]
    assert x.shape == y.shape == m.shape == (50, T) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < V
    half = V // 2
    for row in range(50):
        keys, values = x[row, 0:2 * pairs:2], x[row, 1:2 * pairs:2]
        assert len(set(keys)) == pairs and len(set(values)) == pairs  # distinct pairs
        assert np.all((keys >= 1) & (keys < half)) and np.all(values >= half)
        q = np.nonzero(m[row])[0]
        assert len(q) == pairs  # one query per key
        assert np.all(q >= 2 * pairs) and np.all((q - 2 * pairs) % 2 == 0)  # even offsets
        lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
        assert sorted(x[row, q].tolist()) == sorted(keys.tolist())  # each key queried once
        for t in q:
            assert y[row, t] == lookup[int(x[row, t])]
        assert np.all(y[row][m[row] == 0] == 0)  # no target outside the queries


def test_queries_come_early_under_the_power_law():
    d = mqar.mqar(np.random.default_rng(1), 400, 256, 16, 8192)
    q = np.nonzero(d["loss_mask"])[1] - 32
    # power_a = 0.01: p(g) ~ g^-0.99, so most gaps are small but the tail is long.
    assert np.median(q) < 40 and q.max() > 120


def test_seeds_give_different_sets_and_no_leakage():
    train = mqar.mqar(np.random.default_rng(0), 2000, 64, 4, 8192)["inputs"]
    test = mqar.mqar(np.random.default_rng(1), 300, 64, 4, 8192)["inputs"]
    assert mqar.overlap(train, test) == 0
    assert mqar.overlap(train, train[:10]) == 10  # the check does find duplicates
    again = mqar.mqar(np.random.default_rng(0), 2000, 64, 4, 8192)["inputs"]
    np.testing.assert_array_equal(train, again)  # deterministic per seed


def test_bad_sizes_say_what_to_change():
    with pytest.raises(ValueError, match="seq_len >= 32"):
        mqar.mqar(np.random.default_rng(0), 1, 16, 8, 8192)
    with pytest.raises(ValueError, match="even"):
        mqar.mqar(np.random.default_rng(0), 1, 63, 4, 8192)
    with pytest.raises(ValueError, match="too few keys"):
        mqar.mqar(np.random.default_rng(0), 1, 64, 4, 8)


def test_tagging_task_trains_on_a_fixed_set_and_tests_on_another():
    from _helpers import config

    from rnnjax.tasks.tagging import TaggingTask

    cfg = config("mqar.py:smoke")  # T=16, 2 pairs, vocabulary 32
    task = TaggingTask(cfg)
    it = task.train_iterator(8, seed=0)
    batches = [next(it) for _ in range(20)]
    pool = task._pool["inputs"]
    assert pool.shape == (cfg.data.num_train, 16)
    for b in batches:  # every train row is a row of the fixed set
        assert mqar.overlap(pool, b["inputs"]) == len(b["inputs"])
    test = np.concatenate([b["inputs"] for b in task.eval_batches(5)])
    assert len(test) == cfg.data.num_test
    assert mqar.overlap(pool, test) == 0  # no leakage
    assert task.summarize({"nats": 1.0, "n": 1.0, "correct": 0.0, "seq_ok": 0.0,
                           "seqs": 1.0})["baseline_loss"] == pytest.approx(np.log(16))
