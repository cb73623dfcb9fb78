"""Task families: classification metrics, the stateful LM stream, GloVe, imbalance, text edge cases.

References are hand computations (loops over a confusion matrix, numpy
log-softmax, class weights ``N / (C * n_c)``) and the raw data itself.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import config, restored_params, results, train

from rnnjax.data import text
from rnnjax.data.embeddings import load_glove
from rnnjax.tasks.classification import ClassificationTask, classification_metrics
from rnnjax.tasks.lm import StreamIterator

# ---------------------------------------------------------------------------
# Classification metrics.
# ---------------------------------------------------------------------------
CONFUSION = np.array([[5, 2, 1],
                      [1, 6, 0],
                      [0, 3, 0]])  # (true, predicted); class 2 is never predicted correctly


def test_classification_metrics_by_hand():
    names = ["a", "b", "c"]
    out = classification_metrics(CONFUSION, nll_sum=9.0, names=names)
    n = 18
    # class a: tp 5, predicted 6, true 8; b: tp 6, predicted 11, true 7; c: tp 0, pred 1, true 3
    prec = [5 / 6, 6 / 11, 0.0]
    rec = [5 / 8, 6 / 7, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(prec, rec)]
    assert out["accuracy"] == pytest.approx(11 / n)
    assert out["loss"] == pytest.approx(9.0 / n)
    assert out["macro_precision"] == pytest.approx(sum(prec) / 3)
    assert out["macro_recall"] == pytest.approx(sum(rec) / 3)
    assert out["macro_f1"] == pytest.approx(sum(f1) / 3)
    for name, value in zip(names, f1):
        assert out[f"f1_{name}"] == pytest.approx(value)
    assert out["confusion"] == CONFUSION.tolist()


def test_classification_metrics_class_never_predicted_or_absent():
    conf = np.array([[4, 0], [0, 0]])  # class 1: no true and no predicted examples
    out = classification_metrics(conf, 0.0, ["x", "y"])
    assert out["accuracy"] == 1.0 and out["f1_x"] == 1.0 and out["f1_y"] == 0.0
    assert out["macro_precision"] == 0.5 and out["macro_recall"] == 0.5


def _parity_task(**fields):
    cfg = config("text_classify.py:smoke")
    cfg.unlock()
    cfg.data.name = "parity"
    cfg.data.seq_len = 6
    cfg.data.min_len = 0
    for k, v in fields.items():
        cfg.data[k] = v
    return ClassificationTask(cfg)


def test_eval_sums_confusion_and_nll_against_numpy():
    """eval_sums with fixed logits: the confusion counts and masked NLL sum match numpy."""
    task = _parity_task()
    rng = np.random.default_rng(0)
    B = 12
    logits = rng.normal(size=(B, 2)).astype(np.float32)
    targets = rng.integers(0, 2, B).astype(np.int32)
    mask = np.arange(B) < 9  # the last 3 rows are padding
    batch = {"inputs": jnp.zeros((B, 6), jnp.int32), "lengths": jnp.full(B, 6),
             "targets": jnp.asarray(targets), "batch_mask": jnp.asarray(mask)}
    sums = jax.device_get(task.eval_sums(lambda x, lengths: jnp.asarray(logits), batch))

    pred = logits.argmax(-1)
    want = np.zeros((2, 2), int)
    for t, p, m in zip(targets, pred, mask):
        if m:
            want[t, p] += 1
    np.testing.assert_array_equal(sums["confusion"], want)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(B), targets]
    assert float(sums["nll"]) == pytest.approx(float(nll[mask].sum()), rel=1e-5)
    summary = task.summarize(sums)
    assert summary["accuracy"] == pytest.approx(np.mean(pred[mask] == targets[mask]))


def test_weighted_loss_against_numpy():
    task = _parity_task()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 2)).astype(np.float32)
    targets = np.array([0, 1, 1, 0, 1], np.int32)
    w = np.array([2.0, 0.5, 0.5, 2.0, 0.5], np.float32)
    batch = {"inputs": jnp.zeros((5, 6), jnp.int32), "lengths": jnp.full(5, 6),
             "targets": jnp.asarray(targets), "example_weights": jnp.asarray(w)}
    loss, _ = task.loss(lambda x, lengths: jnp.asarray(logits), batch, {}, True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(5), targets]
    assert float(loss) == pytest.approx(float(np.sum(nll * w) / np.sum(w)), rel=1e-5)


# ---------------------------------------------------------------------------
# The stateful LM stream (truncated BPTT).
# ---------------------------------------------------------------------------
def test_stream_iterator_windows_are_consecutive():
    ids = np.arange(1000, dtype=np.int32)
    B, T = 4, 10
    it = StreamIterator(ids, B, T)
    n = 1000 // B  # tokens per stream
    assert it.windows == (n - 1) // T == 24
    epoch = [next(it) for _ in range(it.windows)]
    for i, batch in enumerate(epoch):
        assert batch["inputs"].shape == batch["targets"].shape == (B, T)
        # stream b is ids[b*n : (b+1)*n]; window i covers positions i*T .. i*T + T
        for b in range(B):
            start = b * n + i * T
            np.testing.assert_array_equal(batch["inputs"][b], np.arange(start, start + T))
            np.testing.assert_array_equal(batch["targets"][b], np.arange(start + 1, start + T + 1))
        np.testing.assert_array_equal(batch["reset"], np.full(B, i == 0))
        if i:  # the targets of window i-1 continue into the inputs of window i
            np.testing.assert_array_equal(epoch[i - 1]["targets"][:, -1], batch["inputs"][:, 0])
    assert it.state_dict() == {"epoch": 1, "index": 0}
    again = next(it)  # a new epoch starts over, with the reset flag
    assert again["reset"].all()
    np.testing.assert_array_equal(again["inputs"], epoch[0]["inputs"])


def test_stream_iterator_resumes_exactly():
    ids = np.arange(500, dtype=np.int32)
    a = StreamIterator(ids, 3, 7)
    for _ in range(30):
        next(a)
    b = StreamIterator(ids, 3, 7)
    b.load_state_dict(a.state_dict())
    for _ in range(30):
        x, y = next(a), next(b)
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_stream_iterator_too_short_text():
    with pytest.raises(ValueError, match="too short"):
        StreamIterator(np.arange(20), 4, 10)


# ---------------------------------------------------------------------------
# GloVe.
# ---------------------------------------------------------------------------
GLOVE_WORDS = ["call", "free", "you", "to", "the", "prize", "win", "home", "zebra"]
GLOVE_DIM = 6


@pytest.fixture(scope="module")
def glove_file(tmp_path_factory):
    rng = np.random.default_rng(42)
    vectors = {w: np.round(rng.normal(size=GLOVE_DIM), 4) for w in GLOVE_WORDS}
    path = tmp_path_factory.mktemp("glove") / "tiny.6d.txt"
    path.write_text("".join(w + " " + " ".join(f"{x:.4f}" for x in v) + "\n"
                            for w, v in vectors.items()))
    return path, vectors


def _glove_config(path, **fields):
    # bucket=False: one padded length, so one compile of the train step instead of two
    return config("text_classify.py:smoke,glove", f"data.glove_path={str(path)!r}",
                  f"model.embed_dim={GLOVE_DIM}", "train.steps=3", "data.bucket=False",
                  **fields)


def _table(workdir):
    from rnnjax.inference import load_for_inference

    _, task, model, _ = load_for_inference(workdir, "latest")
    return task, np.asarray(model.embed.table[...])


def test_glove_frozen_embedding_is_not_trained(glove_file, tmp_path):
    path, vectors = glove_file
    cfg = _glove_config(path)
    assert cfg.model.freeze_embedding and cfg.model.embedding == "glove"
    train(cfg, tmp_path)
    task, table = _table(tmp_path)
    assert task.glove_found == len(GLOVE_WORDS) - 1  # all but "zebra" are in the SMS sample
    for w, v in vectors.items():
        if w in task.vocab:
            np.testing.assert_array_equal(table[task.vocab.token_to_id(w)], v.astype(np.float32))
    np.testing.assert_array_equal(table, load_glove(path, task.vocab, seed=cfg.seed).matrix)
    # Frozen = not a parameter: nothing the optimiser could have changed was checkpointed.
    params, _ = restored_params(tmp_path)
    assert not any("embed" in k for k in params), sorted(params)
    assert math.isfinite(results(tmp_path)["eval"]["loss"])


def test_glove_fine_tuned_embedding_changes(glove_file, tmp_path):
    path, vectors = glove_file
    cfg = _glove_config(path, model__freeze_embedding=False)
    train(cfg, tmp_path)
    task, table = _table(tmp_path)
    start = load_glove(path, task.vocab, seed=cfg.seed).matrix
    params, _ = restored_params(tmp_path)
    assert any("embed" in k for k in params)
    seen = {t for s in task.train_data[0] for t in s.tolist()}
    changed = {i for i in range(len(start)) if not np.array_equal(table[i], start[i])}
    glove_ids = {task.vocab.token_to_id(w) for w in vectors if w in task.vocab}
    assert glove_ids & seen and glove_ids & seen <= changed  # pretrained rows were fine-tuned
    # Rows of tokens that never occur (<bos>, <eos>) get no gradient and stay put.
    assert not changed & {text.BOS_ID, text.EOS_ID}


def test_glove_dimension_mismatch_is_explained(glove_file):
    path, _ = glove_file
    cfg = config("text_classify.py:smoke,glove", f"data.glove_path={str(path)!r}")
    with pytest.raises(ValueError, match=r"embed_dim=8.*6-d"):
        ClassificationTask(cfg)


# ---------------------------------------------------------------------------
# Class imbalance.
# ---------------------------------------------------------------------------
def _task(*overrides, **fields):
    return ClassificationTask(config("text_classify.py:smoke", *overrides, **fields))


def test_imbalance_weight_uses_balanced_class_weights():
    task = _task("data.imbalance='weight'")
    labels = task.train_data[1]
    N, C = len(labels), task.num_classes
    counts = np.bincount(labels, minlength=C)
    assert counts[0] != counts[1]  # the SMS sample is imbalanced
    it = task.train_iterator(8, 0)
    for _ in range(len(it)):
        batch = next(it)
        want = np.array([N / (C * counts[t]) for t in batch["targets"]], np.float32)
        np.testing.assert_allclose(batch["example_weights"], want, rtol=1e-6)


def test_imbalance_oversample_balances_each_epoch():
    task = _task("data.imbalance='oversample'")
    labels = task.train_data[1]
    counts = np.bincount(labels)
    it = task.train_iterator(4, 0)
    seen = np.zeros(task.num_classes, int)
    for _ in range(len(it)):
        batch = next(it)
        assert "example_weights" not in batch
        seen += np.bincount(batch["targets"], minlength=task.num_classes)
    assert len(it) * 4 <= task.num_classes * counts.max()
    # every full batch of the epoch drawn from a class-balanced pool
    assert abs(seen[0] - seen[1]) <= 4, (seen, counts)


def test_imbalance_oversample_trains(tmp_path):
    train(config("text_classify.py:smoke", "data.imbalance='oversample'", "train.steps=2",
                 "data.bucket=False"), tmp_path)
    assert math.isfinite(results(tmp_path)["eval"]["loss"])


# ---------------------------------------------------------------------------
# Text edge cases: OOV, empty and over-long texts.
# ---------------------------------------------------------------------------
def _write_tsv(path, lines):
    path.write_text("".join(f"{label}\t{body}\n" for label, body in lines))
    return path


def test_oov_token_in_eval_maps_to_unk(tmp_path):
    # Every message starts with a word of its own, so each validation message's first word
    # is missing from the (train-only) vocabulary; "hello" is everywhere and known.
    lines = [("spam" if i % 3 == 0 else "ham", f"uniq{i} hello there") for i in range(30)]
    task = _task(f"data.path={str(_write_tsv(tmp_path / 'd.tsv', lines))!r}")
    val_seqs, _ = task.val_data
    train_seqs, _ = task.train_data
    hello = task.vocab.token_to_id("hello")
    assert hello != text.UNK_ID
    assert all(s[0] == text.UNK_ID and s[1] == hello for s in val_seqs)
    assert all(s[0] != text.UNK_ID for s in train_seqs)
    assert task.val_oov == len(val_seqs) and task.train_oov == 0
    batches = task.eval_batches(8)
    firsts = np.concatenate([b["inputs"][b["batch_mask"], 0] for b in batches])
    assert len(firsts) == len(val_seqs) and np.all(firsts == text.UNK_ID)


def test_empty_and_over_long_texts(tmp_path, caplog):
    long_words = [f"w{i % 50}" for i in range(150)]
    lines = [("ham", f"short message {i}") for i in range(20)] + \
            [("spam", f"win prize {i}") for i in range(8)] + \
            [("ham", ""), ("spam", "   "), ("ham", " ".join(long_words)),
             ("spam", " ".join(long_words))]
    path = _write_tsv(tmp_path / "d.tsv", lines)
    with caplog.at_level(logging.WARNING, logger="rnnjax"):
        task = _task(f"data.path={str(path)!r}")
    assert "empty texts" in caplog.text
    train_seqs, train_labels = task.train_data
    val_seqs, val_labels = task.val_data
    assert len(train_seqs) + len(val_seqs) == len(lines) - 2  # the two empty texts dropped
    assert all(len(s) > 0 for s in [*train_seqs, *val_seqs])

    max_len = task.config.data.max_len
    assert max_len == 64
    long_ids = task.vocab.encode(long_words)
    it = task.train_iterator(4, 0)
    batches = [next(it) for _ in range(len(it))] + task.eval_batches(4)
    truncated = 0
    for b in batches:
        B, T = b["inputs"].shape
        assert T <= max_len and np.all(b["lengths"] <= max_len) and np.all(b["lengths"] >= 1)
        for row, n in zip(b["inputs"], b["lengths"]):
            assert np.all(row[n:] == text.PAD_ID)
            if n == max_len:
                np.testing.assert_array_equal(row, long_ids[:max_len])
                truncated += 1
    assert truncated >= 1  # at least one long text was seen, cut to its first max_len tokens


def test_empty_everything_is_an_error(tmp_path):
    path = _write_tsv(tmp_path / "d.tsv", [("ham", "  "), ("spam", " \t "), ("ham", " ")] * 4)
    with pytest.raises(ValueError, match="empty after tokenisation"):
        _task(f"data.path={str(path)!r}")


# ---------------------------------------------------------------------------
# Models take explicit keyword arguments; seeds come from named streams.
# ---------------------------------------------------------------------------
def test_every_model_is_built_from_explicit_keyword_arguments():
    """No model reads a ConfigDict: every constructor argument is keyword-only and plain
    Python values build it; ``model_kwargs`` picks the same arguments out of ``config.model``."""
    import inspect

    import ml_collections
    from flax import nnx

    from rnnjax.models.lm import TokenModel
    from rnnjax.models.seq2seq import Seq2Seq
    from rnnjax.models.sequence import SequenceModel
    from rnnjax.tasks.base import model_kwargs

    rnn = dict(cell="gru", hidden=6, num_layers=1, bidirectional=False, dropout=0.0, unroll=1,
               cell_kwargs={})
    # The residual-block options (config.model.arch and its keys); "rnn" leaves them unused.
    blocks = dict(arch="rnn", conv_kernel=4, output_gate=True, mlp_expansion=2.0, num_heads=2,
                  max_len=16)
    plain = {
        SequenceModel: dict(rnn, **blocks, out_features=3, vocab_size=7, embed_dim=4,
                            freeze_embedding=False, pooling="mean", head_hidden=(5,)),
        TokenModel: dict(rnn, **blocks, vocab_size=7, embed_dim=4, tie_embeddings=False,
                         embed_dropout=0.0),
        Seq2Seq: dict(rnn, src_vocab_size=7, tgt_vocab_size=7, embed_dim=4, decoder_layers=0,
                      decoder_hidden=0, share_embeddings=True, bridge="project",
                      attention="luong_dot", attention_features=0, input_feeding=False),
    }
    for cls, kwargs in plain.items():
        params = inspect.signature(cls.__init__).parameters
        assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "self"), cls
        assert not {"cfg", "config"} & set(params), cls
        assert all("Config" not in str(p.annotation) for p in params.values()), cls
        model = cls(**kwargs, rngs=nnx.Rngs(0))
        # The same arguments read from a ConfigDict by the tasks' helper give the same params.
        sizes = {k: v for k, v in kwargs.items() if "vocab_size" in k or k == "out_features"}
        cfg = ml_collections.ConfigDict({k: v for k, v in kwargs.items() if k not in sizes})
        cfg.unused_by_this_model = "ignored"
        again = cls(**model_kwargs(cls, cfg, **sizes, rngs=nnx.Rngs(0)))
        a, b = nnx.state(model, nnx.Param), nnx.state(again, nnx.Param)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)
        del cfg["hidden"]
        with pytest.raises(ValueError, match="hidden"):
            model_kwargs(cls, cfg, **sizes, rngs=nnx.Rngs(0))


def test_seed_streams_keep_the_offsets_the_tasks_used():
    """The stream table reproduces the inline arithmetic it replaced, so documented metrics
    stay reproducible: params seed, dropout seed+1, data seed, coins seed+2, eval 10_000+seed."""
    from flax import nnx

    from rnnjax.data.streams import SEED_STREAMS, SyntheticIterator, seed_stream
    from rnnjax.tasks.base import build

    for seed in (0, 3):
        assert seed_stream(seed, "params") == seed
        assert seed_stream(seed, "dropout") == seed + 1
        assert seed_stream(seed, "train") == seed
        assert seed_stream(seed, "coins") == seed + 2
        assert seed_stream(seed, "embedding_init") == seed
        assert seed_stream(seed, "eval") == 10_000 + seed
    assert set(SEED_STREAMS) == {"params", "dropout", "train", "coins", "embedding_init", "eval"}
    with pytest.raises(ValueError, match="known"):
        seed_stream(0, "evaluation")

    cfg = config("copy.py:smoke", "seed=3")
    task, model = build(cfg)
    # The eval set is the synthetic stream 10_003, batch by batch.
    it = SyntheticIterator(task.generate, 8, 10_003)
    for got in task.eval_batches(8):
        want = next(it)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # Parameters from Rngs(params=3, dropout=4), as before the table.
    ref = task.build_model(nnx.Rngs(params=3, dropout=4))
    for x, y in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(ref))):
        np.testing.assert_array_equal(jax.random.key_data(x) if jnp.issubdtype(
            x.dtype, jax.dtypes.prng_key) else x, jax.random.key_data(y) if jnp.issubdtype(
            y.dtype, jax.dtypes.prng_key) else y)
