"""Language modelling on any UTF-8 text file, at character or word level.

``config.data``: ``path`` (a text file, or ``builtin:NAME`` for a small text
shipped with rnnjax), ``level`` (``char``/``word``), ``seq_len`` (the BPTT
window T), ``val_fraction`` (the last part of the file), ``val_path`` (optional: a
separate validation file instead, e.g. PTB's ``ptb.valid.txt``), ``stateful``.

* ``stateful = False``: each train batch is B random windows of T+1 tokens; the
  carry starts at zero.
* ``pack = True`` (char level): the train text's lines packed into rows of T
  (:mod:`rnnjax.data.packing`); each line sees only its own context.
* ``stateful = True`` (truncated BPTT): the train text is cut into B parallel
  streams; batch i holds window i of every stream and the carry flows from one
  batch to the next (no gradient across the boundary). It is part of the train
  state, so it is checkpointed and a resumed run continues it exactly. It is
  reset to zero at the start of each epoch.

Evaluation runs over non-overlapping windows of the validation text, each from
a zero carry. Metrics: nats/token, bits/token (bits/char at char level) and
perplexity; with ``data.train_eval_batches`` > 0 the same on windows of the train
text (``train_*``, in eval mode) and the gap ``gap_bits_per_token``.
``rnnjax sample`` (:func:`rnnjax.inference.sample_text`) generates text with
a temperature, top-k and top-p through :func:`rnnjax.decoding.sample_decode`; this task
holds the text <-> ids half (:meth:`LMTask.encode_prime`, :meth:`LMTask.decode_tokens`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax import decoding
from rnnjax.data import batching, packing, text
from rnnjax.data.streams import SyntheticIterator, resolve_path, seed_stream
from rnnjax.models.lm import TokenModel, token_cross_entropy
from rnnjax.tasks.base import Task, activation_penalty, model_kwargs


class StreamIterator:
    """Truncated-BPTT batches: B parallel streams, consecutive T-token windows.

    Batch ``{"inputs", "targets"}`` ``(B, T)`` plus ``reset`` ``(B,)``, True on the
    first window of an epoch. Position ``{"epoch", "index"}`` resumes exactly.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        n = len(ids) // batch_size
        self.windows = (n - 1) // seq_len
        if self.windows < 1:
            raise ValueError(f"the train text ({len(ids)} tokens) is too short for "
                             f"{batch_size} streams of seq_len={seq_len} + 1 tokens; lower "
                             f"train.batch_size or data.seq_len")
        self.streams = ids[: n * batch_size].reshape(batch_size, n)
        self.seq_len = seq_len
        self.epoch = self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        T, i = self.seq_len, self.index
        chunk = self.streams[:, i * T: (i + 1) * T + 1]
        B = chunk.shape[0]
        batch = {"inputs": chunk[:, :-1], "targets": chunk[:, 1:],
                 "reset": np.full(B, i == 0)}
        self.index += 1
        if self.index == self.windows:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


#: Special tokens that never occur in an LM's token stream, so never sampled: the training
#: stream holds none of them (only ``<unk>`` stands in for out-of-vocabulary tokens), so
#: whatever probability the model gives them is noise.
NEVER_SAMPLED = (text.PAD_ID, text.BOS_ID, text.EOS_ID)


class LMTask(Task):
    best_metric = "nats_per_token"
    best_mode = "min"
    eval_loss_metric = "nats_per_token"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        path = resolve_path(d.path)
        self.tokenizer = text.Tokenizer(d.level, lowercase=d.lowercase)
        vocab = None
        if workdir is not None and (Path(workdir) / "vocab.json").exists():
            vocab = text.Vocabulary.load(Path(workdir) / "vocab.json")  # same ids on resume
        val_path = d.get("val_path", "")
        self.corpus = text.load_lm_corpus(path, tokenizer=self.tokenizer, vocab=vocab,
                                          val_fraction=0.0 if val_path else d.val_fraction,
                                          min_freq=d.min_freq, max_size=d.max_vocab or None)
        self.vocab = self.corpus.vocab
        if val_path:  # a separate validation file (PTB, WikiText-2), in the train vocabulary
            val_ids = self.vocab.encode(self.tokenizer(text.read_text(resolve_path(val_path))))
            self.corpus = dataclasses.replace(self.corpus, val=np.asarray(val_ids, np.int32))
        if len(self.corpus.val) < d.seq_len + 1:
            raise ValueError(f"the validation part ({len(self.corpus.val)} tokens) is shorter "
                             f"than data.seq_len + 1 = {d.seq_len + 1}; raise data.val_fraction "
                             f"or lower data.seq_len")

    def save_artifacts(self, workdir):
        self.vocab.save(Path(workdir) / "vocab.json")

    # data -------------------------------------------------------------------
    def train_iterator(self, batch_size, seed):
        T, ids = self.config.data.seq_len, self.corpus.train
        if self.config.data.get("pack", False):
            return self._packed_lines(ids, batch_size, seed_stream(seed, "train"))
        if self.config.data.stateful:
            return StreamIterator(ids, batch_size, T)
        if len(ids) < T + 2:
            raise ValueError(f"the train text ({len(ids)} tokens) is shorter than "
                             f"data.seq_len + 2")

        def windows(rng, b):
            starts = rng.integers(0, len(ids) - T - 1, size=b)
            chunk = ids[starts[:, None] + np.arange(T + 1)]
            return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:]}

        return SyntheticIterator(windows, batch_size, seed_stream(seed, "train"))

    def _packed_lines(self, ids, batch_size, seed):
        """``data.pack``: the train text's lines packed into rows of ``data.seq_len``.

        Segment k runs from the newline that ends line k-1 to the one that ends line k, so
        its inputs start with that newline (a beginning-of-line token) and every token after
        the first newline is a target exactly once, with the context of its own line only.
        A line longer than ``seq_len`` is cut into pieces of ``seq_len`` steps.
        """
        d = self.config.data
        if d.stateful:
            raise ValueError("data.pack and data.stateful exclude each other: packed lines "
                             "start from a zero carry")
        if d.level != "char" or "\n" not in self.vocab:
            raise ValueError("data.pack for an LM packs lines, so it needs data.level=char "
                             "(word-level tokens carry no line breaks)")
        T = d.seq_len
        nl = np.flatnonzero(ids == self.vocab.encode(["\n"])[0])
        inputs, targets = [], []
        for a, b in zip(nl[:-1], nl[1:]):
            for s in range(a, b, T):  # pieces of at most T steps: ids[s : e + 1]
                e = min(s + T, b)
                inputs.append(ids[s:e])
                targets.append(ids[s + 1:e + 1])
        if not inputs:
            raise ValueError("data.pack: the train text has fewer than two line breaks")
        return packing.PackedIterator(inputs, T, batch_size, seed=seed,
                                      step_values={"targets": targets})

    def eval_batches(self, batch_size):
        """Windows of the validation text; with ``data.train_eval_batches`` > 0, also that
        many batches of windows from the start of the train text, marked ``is_train``, so
        :meth:`summarize` reports ``train_*`` metrics (in eval mode: no dropout) and the
        train-validation gap ``gap_bits_per_token``."""
        out = self._windows(self.corpus.val, batch_size, self.config.train.eval_batches,
                            is_train=False)
        n_train = int(self.config.data.get("train_eval_batches", 0))
        if n_train:
            out += self._windows(self.corpus.train, batch_size, n_train, is_train=True)
        return out

    def _windows(self, ids, batch_size, max_batches, *, is_train):
        T = self.config.data.seq_len
        n = min((len(ids) - 1) // T, batch_size * max_batches)
        x = np.stack([ids[i * T: i * T + T] for i in range(n)])
        y = np.stack([ids[i * T + 1: i * T + T + 1] for i in range(n)])
        arrays = {"inputs": x, "targets": y, "is_train": np.full(n, is_train)}
        it = batching.BatchIterator(n, batch_size, shuffle=False, remainder="pad", num_epochs=1,
                                    collate=batching.array_collate(arrays))
        return list(it)

    # model and objective --------------------------------------------------------
    def build_model(self, rngs):
        return TokenModel(**model_kwargs(TokenModel, self.config.model,
                                         vocab_size=len(self.vocab), rngs=rngs))

    def init_task_state(self, model, batch_size):
        if not self.config.data.stateful:
            return {}
        return {"carry": model.initialize_carry(batch_size)}

    def loss(self, model, batch, task_state, train):
        carry = None
        if self.config.data.stateful:
            keep = ~batch["reset"]
            carry = jax.tree.map(
                lambda c: jnp.where(keep.reshape((-1,) + (1,) * (c.ndim - 1)), c, 0.0),
                task_state["carry"])
        seg = batch.get("segment_ids")  # packed lines (data.pack)
        carries, logits, hidden = model(batch["inputs"], carry=carry, segment_ids=seg,
                                        return_hidden=True)
        mask = jnp.ones(batch["targets"].shape, jnp.float32) if seg is None else seg > 0
        nats, n = token_cross_entropy(logits, batch["targets"], mask)
        penalty, metrics = activation_penalty(self.config.model, hidden, mask, seg)
        new_state = {"carry": carries} if self.config.data.stateful else task_state
        if metrics:
            metrics["nats_per_token"] = nats / n
        return nats / n + penalty, (metrics, new_state)

    def eval_sums(self, model, batch):
        _, logits = model(batch["inputs"])
        valid = batch["batch_mask"][:, None] & jnp.ones(batch["targets"].shape, bool)
        is_train = batch["is_train"][:, None]
        val_nats, val_n = token_cross_entropy(logits, batch["targets"], valid & ~is_train)
        train_nats, train_n = token_cross_entropy(logits, batch["targets"], valid & is_train)
        return {"nats": val_nats, "n": val_n, "train_nats": train_nats, "train_n": train_n}

    def summarize(self, sums):
        out = self._metrics(float(sums["nats"]) / float(sums["n"]), "")
        if float(sums.get("train_n", 0)) > 0:
            out.update(self._metrics(float(sums["train_nats"]) / float(sums["train_n"]),
                                     "train_"))
            out["gap_bits_per_token"] = out["bits_per_token"] - out["train_bits_per_token"]
        return out

    def _metrics(self, nats, prefix):
        out = {"nats_per_token": nats, "bits_per_token": nats / math.log(2),
               "perplexity": math.exp(min(nats, 700.0))}
        if self.config.data.level == "char":
            out["bits_per_char"] = out["bits_per_token"]
        return {prefix + k: v for k, v in out.items()}

    # text <-> ids ---------------------------------------------------------------
    def encode_prime(self, prime: str) -> np.ndarray:
        """A prime string -> token ids ``(P,)``, P >= 1; an empty prime is ``<bos>`` (or id 0
        in a vocabulary without one). A token the vocabulary lacks is an error naming it, as
        ``rnnjax decode`` refuses characters outside its alphabet."""
        if prime:
            tokens = self.tokenizer(prime)
            unknown = sorted({t for t in tokens if t not in self.vocab})
            if unknown:
                raise ValueError(f"the prime has {len(unknown)} token(s) the model's vocabulary "
                                 f"lacks: {unknown[:10]}; remove or replace them (the run's "
                                 f"vocab.json lists its {len(self.vocab)} tokens)")
            ids = self.vocab.encode(tokens)
            if len(ids):
                return np.asarray(ids, np.int32)
        return np.array([text.BOS_ID if text.BOS in self.vocab else 0], np.int32)

    def decode_tokens(self, ids) -> str:
        """Generated token ids -> text (the tokenizer's detokenisation)."""
        return self.tokenizer.detokenize(self.vocab.decode(np.asarray(ids).tolist()))

    # extras -----------------------------------------------------------------
    def final_report(self, model, workdir):
        """Writes ``samples.txt``: 200 tokens from ``<bos>``, temperature 0.8, seed 0.

        The same draw as ``rnnjax sample --length 200 --temperature 0.8`` with an empty
        prime: :func:`rnnjax.decoding.sample_decode` over :meth:`TokenModel.step`.
        """
        graphdef, state = nnx.split(model)
        prime = jnp.asarray(self.encode_prime(""))[None]

        @jax.jit
        def run(state, key):
            m = nnx.merge(graphdef, state)
            carry, first = m.prefill(prime)
            return decoding.sample_decode(m.step, carry, None, bos_id=first, eos_id=text.EOS_ID,
                                          max_len=200, rng=key, temperature=0.8,
                                          banned_ids=NEVER_SAMPLED, pad_id=text.PAD_ID).tokens

        tokens = np.asarray(run(state, jax.random.PRNGKey(0)))
        samples = [self.decode_tokens(row) for row in tokens]
        (Path(workdir) / "samples.txt").write_text("\n---\n".join(samples), encoding="utf-8")
        return {}


TASK = LMTask
