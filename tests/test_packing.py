"""Packing (rnnjax.data.packing): first-fit decreasing against a plain transcription and a
brute-force optimum, the row layout, exact resume, and models on packed rows giving the
per-segment outputs and loss of the segments run apart."""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.data.packing import PackedIterator, first_fit_decreasing, pack_rows, packing_stats
from rnnjax.nn import Recurrent

HAS_RESETS = "resets" in inspect.signature(Recurrent.__call__).parameters
#: The model keys of ``model.arch="blocks"``, at values that the "rnn" stack ignores.
RNN_ARCH = dict(arch="rnn", conv_kernel=0, output_gate=False, mlp_expansion=0.0, num_heads=1,
                max_len=1)
needs_resets = pytest.mark.skipif(not HAS_RESETS, reason="the layers take no resets yet "
                                  "(lstm-variants branch not merged)")


def _ffd_reference(lengths, capacity):
    items = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, room = [], []
    for i in items:
        for b in range(len(bins)):
            if room[b] >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def _optimum(lengths, capacity):
    """The fewest bins, by brute force over assignments (small N only)."""
    n = len(lengths)
    lower = -(-sum(lengths) // capacity)
    for k in range(lower, n + 1):
        for assign in itertools.product(range(k), repeat=n):
            if assign[0] != 0:
                continue
            load = [0] * k
            for i, b in enumerate(assign):
                load[b] += lengths[i]
            if max(load) <= capacity and min(load) > 0:
                return k
    return n


@pytest.mark.parametrize("seed", range(8))
def test_ffd_matches_the_transcription_and_is_a_valid_packing(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(5, 40))
    lengths = rng.integers(1, capacity + 1, int(rng.integers(1, 60))).tolist()
    bins = first_fit_decreasing(lengths, capacity)
    assert bins == _ffd_reference(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert first_fit_decreasing(lengths, capacity) == bins  # deterministic


@pytest.mark.parametrize("seed", range(6))
def test_ffd_within_its_bound_of_the_brute_force_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    capacity = 10
    lengths = rng.integers(1, 11, 7).tolist()
    opt = _optimum(lengths, capacity)
    assert len(first_fit_decreasing(lengths, capacity)) <= 11 / 9 * opt + 6 / 9


def test_too_long_or_empty_sequences_are_errors():
    with pytest.raises(ValueError, match="capacity"):
        first_fit_decreasing([3, 9], 8)
    with pytest.raises(ValueError, match=">= 1"):
        first_fit_decreasing([3, 0], 8)


def test_rows_hold_the_sequences_their_segments_and_values():
    seqs = [np.arange(1, n + 1) + 10 * i for i, n in enumerate([5, 2, 3, 1, 4])]
    bins = first_fit_decreasing([len(s) for s in seqs], 6)
    tags = [s * 2 for s in seqs]
    labels = np.array([0, 1, 2, 3, 4])
    out = pack_rows(seqs, bins, 6, max_segments=3, step_values={"tags": tags},
                    segment_values={"targets": labels})
    for r, members in enumerate(bins):
        t = 0
        for s, i in enumerate(members):
            n = len(seqs[i])
            np.testing.assert_array_equal(out["inputs"][r, t:t + n], seqs[i])
            np.testing.assert_array_equal(out["tags"][r, t:t + n], tags[i])
            assert np.all(out["segment_ids"][r, t:t + n] == s + 1)
            assert out["segment_starts"][r, s] == t and out["segment_ends"][r, s] == t + n - 1
            assert out["targets"][r, s] == labels[i] and out["segment_mask"][r, s]
            t += n
        assert out["lengths"][r] == t and np.all(out["segment_ids"][r, t:] == 0)
        assert not out["segment_mask"][r, len(members):].any()
    stats = packing_stats([len(s) for s in seqs], bins, 6)
    assert stats["tokens"] == 15 and stats["rows"] == len(bins)


def test_packed_iterator_resumes_exactly():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 9, int(n)) for n in rng.integers(1, 12, 80)]
    a = PackedIterator(seqs, 16, 4, seed=3)
    first = [next(a) for _ in range(len(a) + 3)]  # into the second epoch
    state = a.state_dict()
    rest = [next(a) for _ in range(5)]
    b = PackedIterator(seqs, 16, 4, seed=3)
    b.load_state_dict(state)
    for x, y in zip(rest, [next(b) for _ in range(5)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(first[0]["inputs"], first[len(a)]["inputs"])  # reshuffled


# -- models on packed rows -----------------------------------------------------------------
def _segments(seed=0, n=7, V=9, max_len=6):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, V, int(k)).astype(np.int32) for k in rng.integers(1, max_len, n)]


@needs_resets
@pytest.mark.parametrize("cell,impl", [("lstm", "fused"), ("lstm", "scan"), ("gru", "auto")])
def test_token_model_packed_equals_segments_run_apart(cell, impl):
    from rnnjax.models.lm import TokenModel, token_cross_entropy

    seqs = _segments()
    it = PackedIterator(seqs, 10, 64, shuffle=False, num_epochs=1, remainder="keep",
                        step_values={"targets": [s[::-1] for s in seqs]})
    batch = next(iter(it))
    model = TokenModel(vocab_size=9, embed_dim=4, cell=cell, hidden=5, num_layers=2,
                       bidirectional=False, dropout=0.0, unroll=1,
                       cell_kwargs={"impl": impl}, tie_embeddings=False, embed_dropout=0.0,
                       **RNN_ARCH,
                       rngs=nnx.Rngs(0))
    model.eval()
    # Why nnx.jit: one compiled program per shape, not an op-by-op compile of every op.
    run = nnx.jit(lambda m, x, seg=None: m(x, segment_ids=seg))

    @nnx.jit
    def run_alone(m, x, y):  # a segment alone and its loss: one program per length
        _, alone = m(x, segment_ids=None)
        return alone, token_cross_entropy(alone, y, jnp.ones(y.shape))[0]

    _, logits = run(model, jnp.asarray(batch["inputs"]), jnp.asarray(batch["segment_ids"]))
    mask = batch["segment_ids"] > 0
    nats, n = jax.jit(token_cross_entropy)(logits, jnp.asarray(batch["targets"]),
                                           jnp.asarray(mask))
    logits = np.asarray(logits)  # sliced below per segment: numpy, no compile per slice
    total = 0.0
    for r, members in enumerate([it.bins[i] for i in range(len(it.bins))]):
        for s, i in enumerate(members):
            t0, t1 = batch["segment_starts"][r, s], batch["segment_ends"][r, s] + 1
            alone, a_nats = run_alone(model, jnp.asarray(seqs[i][None]),
                                      jnp.asarray(seqs[i][::-1][None]))
            np.testing.assert_allclose(logits[r, t0:t1], np.asarray(alone)[0],
                                       rtol=1e-5, atol=1e-5)
            total += float(a_nats)
    np.testing.assert_allclose(float(nats), total, rtol=1e-5)
    assert float(n) == sum(len(s) for s in seqs)


@needs_resets
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_sequence_model_packed_pools_each_segment_alone(pooling, bidirectional):
    from rnnjax.models.sequence import SequenceModel

    seqs = _segments(1)
    it = PackedIterator(seqs, 10, 64, shuffle=False, num_epochs=1, remainder="keep",
                        segment_values={"targets": np.arange(len(seqs)) % 3})
    b = {k: jnp.asarray(v) for k, v in next(iter(it)).items()}
    model = SequenceModel(out_features=3, cell="lstm", hidden=5, num_layers=2,
                          bidirectional=bidirectional, dropout=0.0, unroll=1, cell_kwargs={},
                          pooling=pooling, head_hidden=(), embed_dim=4, freeze_embedding=False,
                          **RNN_ARCH,
                          vocab_size=9, rngs=nnx.Rngs(0))
    model.eval()
    run = nnx.jit(lambda m, *a, **k: m(*a, **k))  # one compile per shape, not op by op
    packed = np.asarray(run(model, b["inputs"], b["lengths"], segment_ids=b["segment_ids"],
                            segment_starts=b["segment_starts"], segment_ends=b["segment_ends"]))
    for r, members in enumerate(it.bins):
        for s, i in enumerate(members):
            alone = run(model, jnp.asarray(seqs[i][None]), jnp.asarray([len(seqs[i])]))
            np.testing.assert_allclose(packed[r, s], np.asarray(alone)[0],
                                       rtol=1e-5, atol=1e-5)


@needs_resets
def test_classification_task_packed_loss_equals_padded_loss(tmp_path):
    """The same texts, packed vs one per row: the same mean loss and eval metrics."""
    from _helpers import config

    from rnnjax.tasks.base import build

    losses = {}
    evals = {}
    for pack in (False, True):
        cfg = config("text_classify.py:smoke", f"data.pack={pack}", "data.imbalance=weight",
                     "model.dropout=0.0")
        task, model = build(cfg)
        model.eval()
        # Jitted (one program per batch shape, not every op compiled eagerly, §15).
        eval_sums = nnx.jit(task.eval_sums)
        loss = nnx.jit(lambda m, b, task=task: task.loss(m, b, {}, False)[0])
        evals[pack] = task.summarize(jax.device_get(jax.tree.map(
            lambda *xs: sum(xs), *[eval_sums(model, {k: jnp.asarray(v)
                                                     for k, v in b.items()})
                                   for b in task.eval_batches(8)])))
        seqs, labels = task.val_data
        if pack:
            it = task._packed_iterator(seqs, labels, 1000, shuffle=False, num_epochs=1,
                                       remainder="keep")
        else:
            from rnnjax.data import batching
            it = batching.BatchIterator(len(seqs), 1000, shuffle=False, remainder="keep",
                                        num_epochs=1, collate=batching.sequence_collate(
                                            seqs, {"targets": labels}, **task._pad_options()))
        batch = {k: jnp.asarray(v) for k, v in next(iter(it)).items()}
        batch.pop("example_weights", None)
        losses[pack] = float(loss(model, batch))
    assert abs(losses[True] - losses[False]) < 1e-5
    assert evals[True]["confusion"] == evals[False]["confusion"]
    assert abs(evals[True]["loss"] - evals[False]["loss"]) < 1e-5


def test_lm_packs_lines_and_targets_every_token_after_the_first_newline_once():
    from _helpers import config

    from rnnjax.tasks.base import get_task

    cfg = config("char_lm.py:smoke", "data.pack=True", "data.seq_len=24")
    task = get_task("lm")(cfg)
    it = task.train_iterator(4, 0)
    ids = task.corpus.train
    nl = task.vocab.encode(["\n"])[0]
    first = int(np.flatnonzero(ids == nl)[0])
    last = int(np.flatnonzero(ids == nl)[-1])
    assert all(1 <= len(x) <= 24 for x in it.sequences)
    # In a packed batch, each segment's targets are its inputs shifted by one.
    seen = 0
    batch = next(it)
    for r in range(batch["inputs"].shape[0]):
        for s in range(batch["segment_mask"].shape[1]):
            if not batch["segment_mask"][r, s]:
                continue
            a, b = batch["segment_starts"][r, s], batch["segment_ends"][r, s] + 1
            x, y = batch["inputs"][r, a:b], batch["targets"][r, a:b]
            np.testing.assert_array_equal(x[1:], y[:-1])
            seen += 1
    assert seen >= batch["inputs"].shape[0]
    assert sum(len(x) for x in it.sequences) == last - first  # each target exactly once
    assert it.stats["fill"] > 0.9
