"""Sequence tagging: a token in, a token out at every step (the memory tasks).

``config.data.name``:

* ``copy``: the copy task (Arjovsky et al. 2016): ``data.num_symbols`` symbols,
  ``data.delay`` blanks, then recall;
* ``selective_copy``: selective copying (Gu & Dao 2023; Feng et al. 2024):
  ``data.num_tokens`` data tokens scattered among ``data.seq_len`` noise steps;
* ``mqar``: multi-query associative recall (Arora et al. 2023, :mod:`rnnjax.data.mqar`):
  ``data.num_pairs`` key-value pairs then their queries in ``data.seq_len`` steps over
  ``data.vocab_size`` tokens; a fixed train set of ``data.num_train`` examples (batches are
  drawn from it with replacement) and a test set of ``data.num_test`` from another seed.

The loss is cross-entropy on the recall positions (``data.loss_on = "mask"``)
or on every position (``"all"``, Arjovsky's reporting). Metrics: loss, token
accuracy on the recall positions, and the fraction of sequences recalled
exactly. The memoryless baseline is ``log(alphabet_size)`` nats per recall token
(``log(vocab_size / 2)`` for MQAR, whose values are half the vocabulary).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from rnnjax.data import mqar, synthetic
from rnnjax.data.streams import SyntheticIterator, fixed_batches, seed_stream
from rnnjax.models.lm import TokenModel, token_cross_entropy
from rnnjax.tasks.base import Task, activation_penalty, model_kwargs

SOURCES = ("copy", "selective_copy", "mqar")


class TaggingTask(Task):
    best_metric = "token_accuracy"
    best_mode = "max"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        if d.name == "copy":
            self.generate = lambda rng, b: synthetic.copy_task(
                rng, b, d.num_symbols, d.delay, d.alphabet_size)
            self.vocab_size = synthetic.copy_task_vocab_size(d.alphabet_size)
        elif d.name == "selective_copy":
            self.generate = lambda rng, b: synthetic.selective_copy_task(
                rng, b, d.seq_len, d.num_tokens, d.alphabet_size)
            self.vocab_size = synthetic.selective_copy_vocab_size(d.alphabet_size)
        elif d.name == "mqar":
            mqar.check_sizes(d.seq_len, d.num_pairs, d.vocab_size)
            self.vocab_size = d.vocab_size
            self.generate = self._mqar_train
            self._pool = None
        else:
            raise ValueError(f"unknown data.name {d.name!r} for task tagging; known: "
                             f"{list(SOURCES)}")
        # Chance on a recall token: the alphabet, or for MQAR the values (half the vocabulary).
        self.baseline_loss = math.log(d.vocab_size // 2 if d.name == "mqar"
                                      else d.alphabet_size)
        if d.get("pack", False):
            raise ValueError(f"data.pack: the {d.name} sequences all have one length, so "
                             f"packing has nothing to gain; set data.pack=False")
        if d.loss_on not in ("mask", "all"):
            raise ValueError(f"data.loss_on must be 'mask' or 'all', got {d.loss_on!r}")

    def train_iterator(self, batch_size, seed):
        return SyntheticIterator(self.generate, batch_size, seed_stream(seed, "train"))

    def _mqar(self, rng, n):
        d = self.config.data
        return mqar.mqar(rng, n, d.seq_len, d.num_pairs, d.vocab_size, power_a=d.power_a)

    def _mqar_train(self, rng, batch_size):
        # Zoology trains on a fixed set of examples (num_train), not on fresh draws; it is made
        # once, from the run's own seed stream, and batches draw rows from it.
        if self._pool is None:
            self._pool = self._mqar(np.random.default_rng(seed_stream(self.config.seed,
                                                                      "train")),
                                    self.config.data.num_train)
        rows = rng.integers(0, self.config.data.num_train, size=batch_size)
        return {k: v[rows] for k, v in self._pool.items()}

    def eval_batches(self, batch_size):
        if self.config.data.name == "mqar":
            test = self._mqar(np.random.default_rng(seed_stream(self.config.seed, "eval")),
                              self.config.data.num_test)
            n = self.config.data.num_test
            return [{k: v[i:i + batch_size] for k, v in test.items()}
                    for i in range(0, n, batch_size)]
        return fixed_batches(self.generate, batch_size, self.config.train.eval_batches,
                             seed=seed_stream(self.config.seed, "eval"))

    def build_model(self, rngs):
        return TokenModel(**model_kwargs(TokenModel, self.config.model,
                                         vocab_size=self.vocab_size, rngs=rngs))

    def loss(self, model, batch, task_state, train):
        _, logits, hidden = model(batch["inputs"], return_hidden=True)
        mask = batch["loss_mask"] if self.config.data.loss_on == "mask" else \
            jnp.ones_like(batch["loss_mask"])
        nats, n = token_cross_entropy(logits, batch["targets"], mask)
        correct = (jnp.argmax(logits, -1) == batch["targets"]) * batch["loss_mask"]
        acc = jnp.sum(correct) / jnp.sum(batch["loss_mask"])
        # AR/TAR over every step (the hidden states run over the whole sequence).
        penalty, metrics = activation_penalty(self.config.model, hidden,
                                              jnp.ones(batch["inputs"].shape, bool))
        return nats / n + penalty, ({"token_accuracy": acc, **metrics}, task_state)

    def eval_sums(self, model, batch):
        _, logits = model(batch["inputs"])
        m = batch["loss_mask"]
        nats, n = token_cross_entropy(logits, batch["targets"], m)
        correct = (jnp.argmax(logits, -1) == batch["targets"]) * m
        seq_ok = jnp.all((correct > 0) | (m == 0), axis=1)
        return {"nats": nats, "n": n, "correct": jnp.sum(correct),
                "seq_ok": jnp.sum(seq_ok), "seqs": jnp.asarray(m.shape[0], jnp.float32)}

    def summarize(self, sums):
        n = float(sums["n"])
        return {"loss": float(sums["nats"]) / n, "token_accuracy": float(sums["correct"]) / n,
                "sequence_accuracy": float(sums["seq_ok"]) / float(sums["seqs"]),
                "baseline_loss": self.baseline_loss}


TASK = TaggingTask
