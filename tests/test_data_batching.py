"""Padding, bucketing, class balance, and the exact-resume property of BatchIterator."""

import json

import numpy as np
import pytest

from rnnjax.data import batching as bt


def test_pad_sequences_values():
    seqs = [[5, 6, 7], [], np.array([9], np.int64), [1, 2, 3, 4, 5]]
    tok, n = bt.pad_sequences(seqs)
    assert tok.dtype == n.dtype == np.int32 and tok.shape == (4, 5)
    assert n.tolist() == [3, 0, 1, 5]
    for row, s in zip(tok, seqs):
        assert row.tolist() == list(s) + [0] * (5 - len(s))
    tok, n = bt.pad_sequences(seqs, max_len=4)
    assert tok.shape == (4, 4) and n.tolist() == [3, 0, 1, 4]
    assert tok[3].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="sequence 3 has length 5 > max_len=4"):
        bt.pad_sequences(seqs, max_len=4, on_overflow="error")
    tok, _ = bt.pad_sequences(seqs[:3], max_len=8, pad_to_max_len=True, pad_id=-1)
    assert tok.shape == (3, 8) and tok[0].tolist() == [5, 6, 7] + [-1] * 5
    assert bt.pad_sequences(seqs, multiple_of=4)[0].shape == (4, 8)
    assert bt.pad_sequences(seqs, multiple_of=4, max_len=6)[0].shape == (4, 6)
    assert bt.pad_sequences([[]])[0].shape == (1, 1)
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        bt.pad_sequences([[1.5, 2.0]])
    with pytest.raises(ValueError, match="needs max_len"):
        bt.pad_sequences(seqs, pad_to_max_len=True)


def test_shuffles_are_functions_of_seed_and_epoch():
    a = bt.shuffled_indices(50, seed=1, epoch=2)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, bt.shuffled_indices(50, 1, 2))
    assert not np.array_equal(a, bt.shuffled_indices(50, 1, 3))
    assert not np.array_equal(a, bt.shuffled_indices(50, 2, 2))


def _padding(batches, lengths):
    return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)


def test_bucket_batches_partition_and_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    batches = bt.bucket_batches(lengths, 16, seed=3, pool_batches=20)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert [len(b) for b in batches] == [16] * 62 + [8]
    random_batches = np.array_split(bt.shuffled_indices(1000, 3), range(16, 1000, 16))
    assert _padding(batches, lengths) < 0.2 * _padding(random_batches, lengths)
    again = bt.bucket_batches(lengths, 16, seed=3, pool_batches=20)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    other = bt.bucket_batches(lengths, 16, seed=4, pool_batches=20)
    assert not all(np.array_equal(x, y) for x, y in zip(batches, other))
    dropped = bt.bucket_batches(lengths, 16, seed=3, drop_last=True)
    assert len(dropped) == 62 and all(len(b) == 16 for b in dropped)
    ordered = bt.bucket_batches(lengths[:10], 5, shuffle=False, pool_batches=2)
    assert np.concatenate(ordered).tolist() == np.argsort(lengths[:10], kind="stable").tolist()


def test_class_weights_formula():
    y = np.array([0] * 6 + [1] * 3 + [3] * 1)
    w = bt.class_weights(y, num_classes=4)
    assert w.dtype == np.float32
    # sklearn "balanced": N / (C_present * n_c); absent class 2 gets 0.
    np.testing.assert_allclose(w, [10 / (3 * 6), 10 / (3 * 3), 0.0, 10 / (3 * 1)], rtol=1e-6)
    assert w[y].mean() == pytest.approx(1.0)
    totals = [w[c] * (y == c).sum() for c in (0, 1, 3)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        bt.class_weights(y, num_classes=3)


def test_oversample_balances_and_keeps_every_example():
    y = np.array([0] * 17 + [1] * 4 + [2] * 1)
    idx = bt.oversample_indices(y, seed=5, epoch=0)
    assert idx.shape == (51,)
    assert np.bincount(y[idx]).tolist() == [17, 17, 17]
    assert set(idx.tolist()) == set(range(22))
    np.testing.assert_array_equal(idx, bt.oversample_indices(y, seed=5, epoch=0))
    assert not np.array_equal(idx, bt.oversample_indices(y, seed=5, epoch=1))


def test_split_indices():
    tr, va = bt.split_indices(100, 0.2, seed=0)
    assert len(va) == 20 and sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    tr2, va2 = bt.split_indices(100, 0.2, seed=0)
    assert np.array_equal(va, va2) and not np.array_equal(va, bt.split_indices(100, 0.2, 1)[1])
    y = np.array([0] * 90 + [1] * 10)
    tr, va = bt.split_indices(100, 0.3, seed=0, stratify=y)
    assert np.bincount(y[va]).tolist() == [27, 3]
    assert np.intersect1d(tr, va).size == 0 and len(tr) + len(va) == 100


def test_collates():
    data = {"x": np.arange(10) * 2, "y": np.arange(10)[:, None] * np.ones((1, 3))}
    c = bt.array_collate(data)
    out = c(np.array([3, 1]))
    assert out["x"].tolist() == [6, 2] and out["y"].shape == (2, 3)
    with pytest.raises(ValueError, match="same leading size"):
        bt.array_collate({"a": np.zeros(3), "b": np.zeros(4)})
    seqs = [[1, 2, 3], [4], [5, 6]]
    sc = bt.sequence_collate(seqs, {"targets": np.array([0, 1, 0])}, multiple_of=2)
    b = sc(np.array([1, 2]))
    assert b["inputs"].tolist() == [[4, 0], [5, 6]] and b["lengths"].tolist() == [1, 2]
    assert b["targets"].tolist() == [1, 0]


def test_iterator_epoch_covers_data_once():
    it = bt.BatchIterator(10, 4, seed=1, remainder="keep")
    assert len(it) == 3
    epoch0 = [next(it) for _ in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(10))
    np.testing.assert_array_equal(np.concatenate(epoch0), bt.shuffled_indices(10, 1, 0))
    assert it.state_dict() == {"epoch": 1, "index": 0, "seed": 1}
    epoch1 = np.concatenate([next(it) for _ in range(3)])
    assert not np.array_equal(epoch1, np.concatenate(epoch0))
    plain = bt.BatchIterator(10, 4, shuffle=False, num_epochs=2)
    got = [b.tolist() for b in plain]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2


def test_iterator_pad_and_weight():
    labels = np.array([0, 0, 0, 1, 0])
    it = bt.BatchIterator(
        5, 2, collate=bt.array_collate({"label": labels}), shuffle=False,
        remainder="pad", labels=labels, imbalance="weight", num_epochs=1,
    )
    batches = list(it)
    assert len(batches) == 3
    last = batches[-1]
    assert last["label"].shape == (2,) and last["batch_mask"].tolist() == [True, False]
    w = bt.class_weights(labels)
    for b in batches:
        np.testing.assert_array_equal(b["example_weights"], w[b["label"]])
    with pytest.raises(ValueError, match="collate must return a dict"):
        next(bt.BatchIterator(5, 2, remainder="pad"))


def test_iterator_oversample_epochs_are_balanced():
    labels = np.array([0] * 12 + [1] * 3)
    it = bt.BatchIterator(15, 4, labels=labels, imbalance="oversample", seed=2, remainder="keep")
    assert it.examples_per_epoch == 24 and len(it) == 6
    epoch = np.concatenate([next(it) for _ in range(6)])
    assert np.bincount(labels[epoch]).tolist() == [12, 12]
    with pytest.raises(ValueError, match="needs labels"):
        bt.BatchIterator(15, 4, imbalance="oversample")


CONFIGS = {
    "shuffle": dict(),
    "keep_remainder": dict(remainder="keep"),
    "bucketed": dict(lengths=np.arange(23) % 7 + 1, pool_batches=2, remainder="pad"),
    "oversampled": dict(labels=np.arange(23) % 5 == 0, imbalance="oversample"),
    "weighted_bucketed": dict(
        labels=(np.arange(23) % 3 == 0).astype(int), imbalance="weight",
        lengths=np.arange(23) % 4 + 1, remainder="keep",
    ),
}


def _iterator(cfg, seed=7):
    labels = cfg.get("labels")
    extras = {"y": np.asarray(labels).astype(int) if labels is not None else np.zeros(23, int)}
    seqs = [list(range(1, n + 1)) for n in cfg.get("lengths", np.full(23, 3))]
    collate = bt.sequence_collate(seqs, {**extras, "id": np.arange(23)})
    return bt.BatchIterator(23, 4, collate=collate, seed=seed, **cfg)


def _same_batch(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_iterator_exact_resume_at_every_position(name):
    cfg = CONFIGS[name]
    ref = _iterator(cfg)
    total = 3 * len(ref) + 2  # crosses two epoch boundaries
    reference = [next(ref) for _ in range(total)]
    for stop in range(total):
        it = _iterator(cfg)
        for _ in range(stop):
            next(it)
        # The state is plain ints and survives a JSON round trip (as in a checkpoint).
        state = json.loads(json.dumps(it.state_dict()))
        assert set(state) == {"epoch", "index", "seed"}
        assert all(type(v) is int for v in state.values())
        resumed = _iterator(cfg, seed=0)  # the stored seed wins over the constructor's
        resumed.load_state_dict(state)
        rest = [next(resumed) for _ in range(total - stop)]
        assert all(_same_batch(a, b) for a, b in zip(rest, reference[stop:])), (name, stop)


def test_iterator_resume_mid_epoch_with_prefetched_plan():
    """Restoring into an iterator that already cached another epoch's plan must not reuse it."""
    a = bt.BatchIterator(20, 3, seed=1)
    for _ in range(8):
        next(a)
    state = a.state_dict()
    b = bt.BatchIterator(20, 3, seed=1)
    next(b)  # caches epoch 0's plan
    b.load_state_dict(state)
    for _ in range(10):
        np.testing.assert_array_equal(next(a), next(b))


def test_iterator_bad_state_and_args():
    it = bt.BatchIterator(10, 3)
    with pytest.raises(ValueError, match="lacks"):
        it.load_state_dict({"epoch": 0, "index": 0})
    with pytest.raises(ValueError, match="0 <= index < 3"):
        it.load_state_dict({"epoch": 0, "index": 3, "seed": 0})
    with pytest.raises(ValueError, match="no full batch"):
        bt.BatchIterator(3, 4)
    with pytest.raises(ValueError, match="remainder"):
        bt.BatchIterator(3, 1, remainder="wrap")
