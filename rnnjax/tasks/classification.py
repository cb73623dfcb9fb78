"""Sequence classification: token sequence -> one of C classes.

``config.data.name`` picks the source:

* ``tsv``: a ``label<TAB>text`` file (``data.path``; the UCI SMS Spam Collection
  format), tokenised at ``data.level`` (``char`` or ``word``), with a stratified
  train/val split (``data.val_fraction``), ``data.max_len`` truncation, length
  bucketing, ``data.imbalance`` (``oversample`` or ``weight``) and optional GloVe
  vectors (``model.embedding = "glove"`` with ``data.glove_path``); ``data.pack``
  packs the texts into rows of ``data.max_len`` (:mod:`rnnjax.data.packing`, first-fit
  decreasing) with one label per segment, instead of one padded text per row;
* ``temporal_order``: Hochreiter & Schmidhuber's task 6a (4 classes);
* ``parity``: parity of a bit string (``data.min_len`` for variable lengths).

Metrics: accuracy, per-class and macro precision/recall/F1, the confusion matrix.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.data import batching, packing, synthetic, text
from rnnjax.data.embeddings import load_glove
from rnnjax.data.streams import SyntheticIterator, fixed_batches, resolve_path, seed_stream
from rnnjax.models.sequence import SequenceModel
from rnnjax.tasks.base import Task, model_kwargs

SOURCES = ("tsv", "temporal_order", "parity")


class ClassificationTask(Task):
    best_metric = "accuracy"
    best_mode = "max"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        self.pretrained = None
        self.generate = None
        if d.name == "tsv":
            self._load_tsv(d)
        elif d.name == "temporal_order":
            self.generate = lambda rng, b: _with_lengths(
                synthetic.temporal_order_task(rng, b, d.seq_len))
            self.vocab_size, self.label_names = 8, ["XX", "XY", "YX", "YY"]
        elif d.name == "parity":
            min_len = d.min_len if d.min_len > 0 else None
            self.generate = lambda rng, b: synthetic.parity_task(rng, b, d.seq_len, min_len)
            self.vocab_size, self.label_names = 2, ["even", "odd"]
        else:
            raise ValueError(f"unknown data.name {d.name!r} for task classification; known: "
                             f"{list(SOURCES)}")
        self.num_classes = len(self.label_names)

    def _load_tsv(self, d):
        if not d.path:
            raise ValueError("data.path is empty: give a label<TAB>text file, e.g. "
                             "--config.data.path=SMSSpamCollection (see rnnjax.data.download)")
        ds = text.load_tsv_classification(resolve_path(d.path))
        self.label_names = ds.label_names
        train_idx, val_idx = batching.split_indices(len(ds), d.val_fraction, seed=d.split_seed,
                                                    stratify=ds.labels)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(f"data: {d.path} has too few examples ({len(ds)}) for a train/"
                             f"validation split with data.val_fraction={d.val_fraction}: give "
                             f"a file with more labelled lines")
        _check_classes(ds.labels[train_idx], ds.labels[val_idx], self.label_names, d.path)
        self.tokenizer = text.Tokenizer(d.level, lowercase=d.lowercase)
        train_texts = [ds.texts[i] for i in train_idx]
        self.vocab = text.Vocabulary.build(
            (tok for t in train_texts for tok in self.tokenizer(t)), min_freq=d.min_freq,
            max_size=d.max_vocab or None, meta={"tokenizer": self.tokenizer.to_dict(),
                                                "labels": self.label_names})
        self.vocab_size = len(self.vocab)
        seqs, self.train_oov = text.encode_texts(train_texts, self.tokenizer, self.vocab)
        val_seqs, self.val_oov = text.encode_texts([ds.texts[i] for i in val_idx],
                                                   self.tokenizer, self.vocab)
        self.train_data = _drop_empty(seqs, ds.labels[train_idx], "train")
        self.val_data = _drop_empty(val_seqs, ds.labels[val_idx], "val")
        if self.config.model.embedding == "glove":
            glove = load_glove(d.glove_path, self.vocab,
                               seed=seed_stream(self.config.seed, "embedding_init"))
            if glove.matrix.shape[1] != self.config.model.embed_dim:
                raise ValueError(f"model.embed_dim={self.config.model.embed_dim} but the GloVe "
                                 f"file has {glove.matrix.shape[1]}-d vectors")
            self.pretrained = glove.matrix
            self.glove_found = glove.num_found

    def save_artifacts(self, workdir):
        if self.config.data.name == "tsv":
            self.vocab.save(workdir / "vocab.json")

    # data -------------------------------------------------------------------
    def train_iterator(self, batch_size, seed):
        if self.generate is not None:
            return SyntheticIterator(self.generate, batch_size, seed_stream(seed, "train"))
        seqs, labels = self.train_data
        d = self.config.data
        if self._packed():
            # "pad": packing leaves few rows (a small file may hold fewer than a batch); the
            # padded rows are masked out of the loss by batch_mask.
            return self._packed_iterator(seqs, labels, batch_size, remainder="pad",
                                         seed=seed_stream(seed, "train"))
        collate = batching.sequence_collate(seqs, {"targets": labels}, **self._pad_options())
        lengths = np.minimum([len(s) for s in seqs], d.max_len) if d.bucket else None
        return batching.BatchIterator(len(seqs), batch_size, seed=seed_stream(seed, "train"),
                                      collate=collate,
                                      lengths=lengths, labels=labels,
                                      imbalance=d.imbalance or None)

    def _packed(self) -> bool:
        if not self.config.data.get("pack", False):
            return False
        if self.generate is not None:
            raise ValueError(f"data.pack needs texts of different lengths (data.name=tsv); "
                             f"{self.config.data.name} sequences all have one length")
        return True

    def _packed_iterator(self, seqs, labels, batch_size, **kwargs):
        d = self.config.data
        if d.imbalance == "oversample":
            raise ValueError("data.pack does not oversample; use data.imbalance=weight")
        seqs = [np.asarray(s[: d.max_len]) for s in seqs]
        values = {"targets": np.asarray(labels)}
        if d.imbalance == "weight":
            w = batching.class_weights(self.train_data[1], self.num_classes)
            values["example_weights"] = w[np.asarray(labels)].astype(np.float32)
        # One S for train and eval, so each compiles once per shape.
        if not hasattr(self, "_max_segments"):
            self._max_segments = max(
                packing.packing_stats([len(s) for s in part], packing.first_fit_decreasing(
                    [min(len(s), d.max_len) for s in part], d.max_len), d.max_len)
                ["max_segments"] for part in (self.train_data[0], self.val_data[0]))
        return packing.PackedIterator(seqs, d.max_len, batch_size, segment_values=values,
                                      max_segments=self._max_segments, **kwargs)

    def _pad_options(self):
        # Fixed T = max_len compiles the step once; with bucketing, T rounds up to a
        # multiple of 32 so only a few shapes (and compiles) occur.
        d = self.config.data
        if d.bucket:
            return {"max_len": d.max_len, "multiple_of": 32}
        return {"max_len": d.max_len, "pad_to_max_len": True}

    def eval_batches(self, batch_size):
        if self.generate is not None:
            return fixed_batches(self.generate, batch_size, self.config.train.eval_batches,
                                 seed=seed_stream(self.config.seed, "eval"))
        seqs, labels = self.val_data
        if self._packed():
            return list(self._packed_iterator(seqs, labels, batch_size, shuffle=False,
                                              num_epochs=1, remainder="pad"))
        collate = batching.sequence_collate(seqs, {"targets": labels}, **self._pad_options())
        return list(batching.BatchIterator(len(seqs), batch_size, shuffle=False, collate=collate,
                                           remainder="pad", num_epochs=1))

    # model and objective --------------------------------------------------------
    def build_model(self, rngs):
        return SequenceModel(**model_kwargs(
            SequenceModel, self.config.model, out_features=self.num_classes,
            vocab_size=self.vocab_size, pretrained=self.pretrained, rngs=rngs))

    def _logits(self, model, batch):
        """``(logits (N, C), targets (N,), valid (N,), weights (N,) or None)``: one row per
        example, padded or packed (then N = B*S segments, ``valid`` = ``segment_mask``)."""
        valid = batch.get("batch_mask", jnp.ones(batch["inputs"].shape[0], bool))
        w = batch.get("example_weights")
        if "segment_ids" not in batch:
            return model(batch["inputs"], batch["lengths"]), batch["targets"], valid, w
        logits = model(batch["inputs"], batch["lengths"], segment_ids=batch["segment_ids"],
                       segment_starts=batch["segment_starts"], segment_ends=batch["segment_ends"])
        valid = batch["segment_mask"] & valid[:, None]
        C = logits.shape[-1]
        return (logits.reshape(-1, C), batch["targets"].reshape(-1), valid.reshape(-1),
                None if w is None else w.reshape(-1))

    def loss(self, model, batch, task_state, train):
        logits, targets, valid, w = self._logits(model, batch)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        w = valid.astype(nll.dtype) if w is None else w * valid
        loss = jnp.sum(jnp.where(valid, nll, 0.0) * w) / jnp.maximum(jnp.sum(w), 1e-9)
        acc = jnp.sum((jnp.argmax(logits, -1) == targets) * valid) / jnp.maximum(
            jnp.sum(valid), 1)
        return loss, ({"accuracy": acc}, task_state)

    def eval_sums(self, model, batch):
        logits, targets, valid, _ = self._logits(model, batch)
        nll = jnp.where(valid, optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                        0.0)
        pred = jnp.argmax(logits, -1)
        C = self.num_classes
        onehot_t = (targets[:, None] == jnp.arange(C)) & valid[:, None]
        onehot_p = pred[:, None] == jnp.arange(C)
        confusion = onehot_t.astype(jnp.int32).T @ onehot_p.astype(jnp.int32)  # (true, pred)
        return {"confusion": confusion, "nll": jnp.sum(nll)}

    def summarize(self, sums):
        return classification_metrics(np.asarray(sums["confusion"]), float(sums["nll"]),
                                      self.label_names)


def classification_metrics(confusion: np.ndarray, nll_sum: float, names) -> dict:
    """Accuracy, per-class and macro P/R/F1 from a ``(C, C)`` (true, predicted) matrix."""
    n = confusion.sum()
    tp = np.diag(confusion).astype(float)
    prec = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    rec = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    out = {"accuracy": float(tp.sum() / max(n, 1)), "loss": nll_sum / max(n, 1),
           "macro_precision": float(prec.mean()), "macro_recall": float(rec.mean()),
           "macro_f1": float(f1.mean()), "confusion": confusion.tolist()}
    for i, name in enumerate(names):
        out[f"f1_{name}"] = float(f1[i])
    return out


def _check_classes(train_labels, val_labels, names, path) -> None:
    """A classifier needs two classes to learn from; a class the validation split lacks is
    not measured (a warning, since a small file can be like that on purpose)."""
    present = sorted(set(np.asarray(train_labels).tolist()))
    if len(present) < 2:
        only = ", ".join(repr(names[i]) for i in present)
        raise ValueError(f"data: the training split of {path} holds one class ({only}); a "
                         f"classifier needs at least 2 classes. Check the label column")
    missing = sorted(set(range(len(names))) - set(np.asarray(val_labels).tolist()))
    if missing:
        logging.getLogger("rnnjax").warning(
            "data: the validation split of %s has no example of class(es) %s; their recall "
            "and F1 are not measured", path, [names[i] for i in missing])


def _drop_empty(seqs, labels, part):
    keep = [i for i, s in enumerate(seqs) if len(s) > 0]
    if len(keep) < len(seqs):
        logging.getLogger("rnnjax").warning("dropped %d empty texts from the %s split",
                                            len(seqs) - len(keep), part)
    if not keep:
        raise ValueError(f"data: every text of the {part} split is empty after tokenisation")
    return [seqs[i] for i in keep], labels[keep]


def _with_lengths(batch):
    B, T = batch["inputs"].shape
    return {**batch, "lengths": np.full(B, T, np.int32)}


TASK = ClassificationTask
