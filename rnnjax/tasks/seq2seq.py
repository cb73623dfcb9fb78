"""Sequence-to-sequence: an encoder-decoder trained by teacher forcing or scheduled sampling.

``config.data`` picks the data (``name``):

* ``addition``: integer addition as text (``"37+412"`` -> ``"449"``; the Flax seq2seq
  example), from :func:`rnnjax.data.synthetic.addition_task`: ``max_digits`` per
  operand, ``reverse_target`` (answer digits least significant first; the decoded
  text is turned back, so outputs always read as the sum);
* ``reverse`` / ``copy``: a random string over ``alphabet_size`` letters (``a``,
  ``b``, ...) of a length uniform in ``[min_len, max_len]``, to be reversed or copied;
* ``filter``: such a string, copied without the letters of the alphabet's second half
  (``"agbjc"`` -> ``"abc"`` over 10 letters): the output's length varies with the
  content, from 0 to the input's, so the decoder has to decide where to stop
  (:func:`filter_task`).

and for every source ``reverse_source``: feed each source backwards (Sutskever et
al. 2014), which puts the first target tokens next to the source tokens they
depend on for a copy. ``rnnjax decode`` (:func:`rnnjax.inference.decode_texts`) applies
the same transforms to its inputs through :meth:`Seq2SeqTask.encode_source` and
:meth:`Seq2SeqTask.decode_target`.

Batches: ``src`` ``(B, S)`` int32 (right-padded with ``<pad>``), ``src_lengths``
``(B,)``, ``decoder_inputs`` ``(B, T)`` (``<bos> y``), ``targets`` ``(B, T)``
(``y <eos>``, ``<pad>`` after) and ``target_mask`` ``(B, T)`` float, 1 up to and
including ``<eos>``. Shapes are fixed per config, so nothing recompiles.

``config.objective`` (a sub-dict this task adds) is the training objective:

=================  ===========================================================
``mode``           ``teacher_forcing`` | ``free_running`` | ``scheduled_sampling``
``schedule``       scheduled sampling's teacher-forcing probability ``eps_i`` at
                   train step ``i`` (Bengio et al. 2015), floored at ``min_ratio``:
                   ``constant``: ``ratio``;
                   ``linear``: ``max(min_ratio, k - c * i)``;
                   ``exponential``: ``max(min_ratio, k ** i)`` (``0 < k <= 1``);
                   ``inverse_sigmoid``: ``max(min_ratio, k / (k + exp(i / k)))`` (``k >= 1``)
``k``, ``c``       the schedule's parameters, as in the paper
``ratio``          the ``constant`` schedule's probability
``min_ratio``      the floor (the paper's epsilon)
``sample_tokens``  the model's token is a sample of its softmax (True) or its argmax
``label_smoothing``  on the training cross-entropy (eval loss is plain nats)
=================  ===========================================================

Teacher forcing runs the decoder's sequence form (one RNN call) when the model has
one. Otherwise each target token flips its own coin: with probability ``eps_i`` the
decoder reads the gold previous token, else the model's own previous prediction,
under ``stop_gradient``. ``free_running`` is ``eps = 0``. The step ``i`` is a counter
in the task state (``{"step": int32}``), incremented by every train step, so it is
checkpointed and a resumed run continues the schedule; the coins are drawn from
``fold_in(PRNGKey(seed_stream(seed, "coins")), i)`` (``seed + 2``; see
:data:`rnnjax.data.streams.SEED_STREAMS`).

``config.decode``: ``beam_size`` (0 skips the beam metric), ``length_penalty``,
``alpha`` (see :func:`rnnjax.decoding.beam_search`).

Eval metrics: ``loss`` (teacher-forced nats per target token), ``token_accuracy``
(teacher forced), ``greedy_exact_match`` and ``beam_exact_match`` (the whole output,
``<eos>`` included, equals the target), and ``greedy_too_short`` and ``beam_too_short``
(the fraction of outputs that end before their target does: the short-hypothesis bias
that beam search without length normalisation has), all decoded by the jit-compiled
decoders of :mod:`rnnjax.decoding` inside the eval step.

Tasks must never import the trainer or the CLI.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax import decoding
from rnnjax.data import synthetic
from rnnjax.data.streams import SyntheticIterator, fixed_batches, seed_stream
from rnnjax.data.text import BOS_ID, EOS_ID, PAD_ID, SPECIALS
from rnnjax.models.lm import token_cross_entropy
from rnnjax.models.seq2seq import Seq2Seq
from rnnjax.tasks.base import Task, model_kwargs

SOURCES = ("addition", "reverse", "copy", "filter")
MODES = ("teacher_forcing", "free_running", "scheduled_sampling")
SCHEDULES = ("constant", "linear", "exponential", "inverse_sigmoid")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------
# Scheduled sampling.
# ---------------------------------------------------------------------------
def check_objective(obj) -> None:
    """Raises ValueError for an unknown mode/schedule or parameters outside their range."""
    mode = obj["mode"]
    if mode not in MODES:
        raise ValueError(f"unknown objective.mode {mode!r}; known: {list(MODES)}")
    if mode != "scheduled_sampling":
        return
    sched = obj["schedule"]
    if sched not in SCHEDULES:
        raise ValueError(f"unknown objective.schedule {sched!r}; known: {list(SCHEDULES)}")
    k, c = float(obj["k"]), float(obj["c"])
    floor, ratio = float(obj["min_ratio"]), float(obj["ratio"])
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"objective.min_ratio must be in [0, 1], got {floor}")
    if sched == "constant" and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"objective.ratio must be in [0, 1], got {ratio}")
    if sched == "linear" and (c < 0 or not 0.0 <= k <= 1.0):
        raise ValueError(f"the linear schedule eps_i = k - c*i needs 0 <= k <= 1 and c >= 0, got "
                         f"k={k}, c={c} (e.g. k=1, c=1/steps_to_zero)")
    if sched == "exponential" and not 0.0 < k <= 1.0:
        raise ValueError(f"the exponential schedule eps_i = k**i needs 0 < k <= 1, got k={k} "
                         f"(e.g. 0.999)")
    if sched == "inverse_sigmoid" and k < 1.0:
        raise ValueError(f"the inverse_sigmoid schedule eps_i = k/(k + exp(i/k)) needs k >= 1, "
                         f"got k={k} (larger k decays later, e.g. k=200)")


def teacher_forcing_prob(obj, step) -> jax.Array:
    """``eps_i``: the probability of feeding the gold token at train step ``step`` (float32)."""
    check_objective(obj)
    mode = obj["mode"]
    if mode == "teacher_forcing":
        return jnp.float32(1.0)
    if mode == "free_running":
        return jnp.float32(0.0)
    i = jnp.asarray(step, jnp.float32)
    k, c = float(obj["k"]), float(obj["c"])
    sched = obj["schedule"]
    if sched == "constant":
        eps = jnp.float32(obj["ratio"])
    elif sched == "linear":
        eps = k - c * i
    elif sched == "exponential":
        eps = jnp.power(jnp.float32(k), i)
    else:  # exp overflows to inf for large i, which gives the right limit 0
        eps = k / (k + jnp.exp(i / k))
    return jnp.clip(eps, float(obj["min_ratio"]), 1.0).astype(jnp.float32)


def _always_teacher_forced(obj) -> bool:
    mode = obj["mode"]
    return mode == "teacher_forcing" or (
        mode == "scheduled_sampling" and obj["schedule"] == "constant"
        and float(obj["ratio"]) == 1.0)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------
def reverse_valid(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverses the first ``lengths[b]`` tokens of each row of ``(B, S)``; padding stays put."""
    t = np.arange(tokens.shape[1])[None, :]
    idx = np.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return np.take_along_axis(tokens, idx, axis=1)


def _draw_strings(rng: np.random.Generator, batch_size: int, alphabet_size: int, min_len: int,
                  max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src (B, max_len), lengths (B,))``: letters uniform over the alphabet, lengths
    uniform in ``[min_len, max_len]``, ``<pad>`` after."""
    first = len(SPECIALS)
    lengths = rng.integers(min_len, max_len + 1, size=batch_size).astype(np.int32)
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    src = np.where(valid, rng.integers(0, alphabet_size, (batch_size, max_len)) + first,
                   PAD_ID).astype(np.int32)
    return src, lengths


def _frame(src: np.ndarray, src_lengths: np.ndarray, ans: np.ndarray,
           ans_lengths: np.ndarray) -> dict[str, np.ndarray]:
    """A batch from the answers ``ans (B, max_len)`` (``<pad>`` after ``ans_lengths``):
    ``decoder_inputs`` ``<bos> y``, ``targets`` ``y <eos>``, ``T = max_len + 1``."""
    batch_size, max_len = ans.shape
    T = max_len + 1
    dec_in = np.full((batch_size, T), PAD_ID, np.int32)
    targets = np.full((batch_size, T), PAD_ID, np.int32)
    dec_in[:, 0] = BOS_ID
    dec_in[:, 1:] = ans
    targets[:, :max_len] = ans
    targets[np.arange(batch_size), ans_lengths] = EOS_ID
    mask = (np.arange(T)[None, :] <= ans_lengths[:, None]).astype(np.float32)
    return {"src": src, "src_lengths": src_lengths, "decoder_inputs": dec_in,
            "targets": targets, "target_mask": mask}


def string_task(rng: np.random.Generator, batch_size: int, alphabet_size: int, min_len: int,
                max_len: int, reverse: bool) -> dict[str, np.ndarray]:
    """Random strings to reverse (or copy): ``S = max_len``, ``T = max_len + 1``."""
    src, lengths = _draw_strings(rng, batch_size, alphabet_size, min_len, max_len)
    return _frame(src, lengths, reverse_valid(src, lengths) if reverse else src, lengths)


def filter_task(rng: np.random.Generator, batch_size: int, alphabet_size: int, min_len: int,
                max_len: int) -> dict[str, np.ndarray]:
    """Random strings, to be copied without the letters of the alphabet's second half:
    ``"agbjc" -> "abc"`` over 10 letters (``a``-``e`` kept). The answer's length is the
    number of kept letters, from 0 to the source length (binomial, half on average), so
    it is not the source's length: the decoder must know when the kept letters run out.
    ``S = max_len``, ``T = max_len + 1`` (an empty answer is ``<eos>`` alone)."""
    src, lengths = _draw_strings(rng, batch_size, alphabet_size, min_len, max_len)
    kept = (src != PAD_ID) & (src < len(SPECIALS) + filter_kept(alphabet_size))
    # A stable sort of "not kept" moves the kept letters to the front, in their order.
    order = np.argsort(~kept, axis=1, kind="stable")
    n_kept = kept.sum(axis=1).astype(np.int32)
    ans = np.take_along_axis(src, order, axis=1)
    ans = np.where(np.arange(max_len)[None, :] < n_kept[:, None], ans, PAD_ID).astype(np.int32)
    return _frame(src, lengths, ans, n_kept)


def filter_kept(alphabet_size: int) -> int:
    """How many letters (the first ones) the ``filter`` task keeps: half, rounded up."""
    return (alphabet_size + 1) // 2


class Seq2SeqTask(Task):
    best_metric = "greedy_exact_match"
    best_mode = "max"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        d = config.data
        self.source = d.name
        self.reverse_source = bool(d.reverse_source)
        if self.source == "addition":
            if not 1 <= d.max_digits <= 17:
                raise ValueError(f"data.max_digits must be in [1, 17], got {d.max_digits}")
            self.tokens = synthetic.ADDITION_TOKENS
            self.max_source_len, self.max_target_len = 2 * d.max_digits + 1, d.max_digits + 2

            def generate(rng, b):
                r = synthetic.addition_task(rng, b, d.max_digits, bool(d.reverse_target))
                return {"src": r["inputs"], "src_lengths": r["lengths"],
                        "decoder_inputs": r["decoder_inputs"], "targets": r["targets"],
                        "target_mask": r["loss_mask"]}
        elif self.source in ("reverse", "copy", "filter"):
            if not 1 <= d.alphabet_size <= len(LETTERS):
                raise ValueError(f"data.alphabet_size must be in [1, 26], got {d.alphabet_size}")
            if not 1 <= d.min_len <= d.max_len:
                raise ValueError(f"need 1 <= data.min_len <= data.max_len, got {d.min_len}, "
                                 f"{d.max_len}")
            self.tokens = (*SPECIALS, *LETTERS[: d.alphabet_size])
            self.max_source_len, self.max_target_len = d.max_len, d.max_len + 1

            def generate(rng, b):
                if self.source == "filter":
                    return filter_task(rng, b, d.alphabet_size, d.min_len, d.max_len)
                return string_task(rng, b, d.alphabet_size, d.min_len, d.max_len,
                                   reverse=self.source == "reverse")
        else:
            raise ValueError(f"unknown data.name {self.source!r} for task seq2seq; known: "
                             f"{list(SOURCES)}")

        def generate_final(rng, b):
            batch = generate(rng, b)
            if self.reverse_source:
                batch["src"] = reverse_valid(batch["src"], batch["src_lengths"])
            return batch

        self.generate = generate_final
        self.vocab_size = len(self.tokens)
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self.objective = config.objective
        check_objective(self.objective)
        self.beam_size = int(config.decode.beam_size)
        self.length_penalty = config.decode.length_penalty
        self.alpha = float(config.decode.alpha)
        if self.beam_size < 0:
            raise ValueError(f"decode.beam_size must be >= 0 (0 = no beam metric), got "
                             f"{self.beam_size}")
        decoding.length_penalty_fn(self.length_penalty)  # validates the name

    # data -------------------------------------------------------------------
    def train_iterator(self, batch_size, seed):
        return SyntheticIterator(self.generate, batch_size, seed_stream(seed, "train"))

    def eval_batches(self, batch_size):
        return fixed_batches(self.generate, batch_size, self.config.train.eval_batches,
                             seed=seed_stream(self.config.seed, "eval"))

    # text <-> ids -------------------------------------------------------------
    def encode_source(self, text: str) -> np.ndarray:
        """One input string -> source ids ``(S,)`` as the model reads them (reversed if
        ``data.reverse_source``)."""
        text = text.strip()
        if not text:
            raise ValueError("empty input: give a source string, e.g. "
                             + ("'37+412'" if self.source == "addition" else "'abcab'"))
        allowed = "".join(self.tokens[len(SPECIALS):])
        bad = sorted(set(text) - set(allowed))
        if bad:
            raise ValueError(f"input {text!r} has characters {bad} outside this task's alphabet "
                             f"{allowed!r}")
        if self.source == "addition" and text.count("+") != 1:
            raise ValueError(f"input {text!r} must be two numbers joined by one '+', e.g. "
                             f"'37+412'")
        ids = np.asarray([self._index[ch] for ch in text], np.int32)
        return ids[::-1].copy() if self.reverse_source else ids

    def training_lengths(self) -> str:
        """The input lengths the training stream covers, in words."""
        d = self.config.data
        if self.source == "addition":
            return f"operands of at most {d.max_digits} digits"
        return f"{d.min_len} to {d.max_len} symbols"

    def beyond_training(self, text: str) -> bool:
        """True if a (valid) input string is longer than anything the training stream draws."""
        d = self.config.data
        if self.source == "addition":
            return max(len(x) for x in text.split("+")) > d.max_digits
        return len(text) > d.max_len

    def decode_target(self, ids) -> str:
        """Target ids -> text: stops at ``<eos>``, skips ``<pad>``/``<bos>``, and undoes
        ``data.reverse_target`` so an addition output reads as the sum."""
        out = []
        for t in np.asarray(ids).tolist():
            if t == EOS_ID:
                break
            if t in (PAD_ID, BOS_ID):
                continue
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"token id {t} is outside the vocabulary [0, {self.vocab_size})")
            out.append(self.tokens[t])
        if self.source == "addition" and self.config.data.reverse_target:
            out = out[::-1]
        return "".join(out)

    # model and objective --------------------------------------------------------
    def build_model(self, rngs):
        if self.config.model.get("arch", "rnn") != "rnn":
            # Not yet: the block decoder would need cross-attention to the encoder.
            raise ValueError(f"task seq2seq supports model.arch='rnn' only, got "
                             f"{self.config.model.arch!r}")
        return Seq2Seq(**model_kwargs(Seq2Seq, self.config.model, src_vocab_size=self.vocab_size,
                                      tgt_vocab_size=self.vocab_size, rngs=rngs))

    def init_task_state(self, model, batch_size):
        return {"step": jnp.zeros((), jnp.int32)}

    def loss(self, model, batch, task_state, train):
        carry, context = model.encode(batch["src"], batch["src_lengths"])
        step = task_state["step"]
        targets, mask = batch["targets"], batch["target_mask"]
        metrics: dict[str, Any] = {}
        if not train or _always_teacher_forced(self.objective):
            logits, _ = model.teacher_forced(carry, context, batch["decoder_inputs"])
        else:
            eps = teacher_forcing_prob(self.objective, step)
            key = jax.random.fold_in(
                jax.random.PRNGKey(seed_stream(self.config.seed, "coins")), step)
            coin_key, sample_key = jax.random.split(key)
            gold = jax.random.uniform(coin_key, targets.shape) < eps  # one coin per token
            logits, _, _ = model.unroll(
                carry, context, batch["decoder_inputs"], gold,
                sample_key if self.objective["sample_tokens"] else None)
            # Step 0 reads <bos> whatever the coin says; count only the coins that mattered.
            real = mask[:, 1:]
            metrics["teacher_forcing_prob"] = eps
            metrics["gold_fraction"] = jnp.sum(gold[:, 1:] * real) / jnp.maximum(
                jnp.sum(real), 1.0)
        smoothing = float(self.objective["label_smoothing"])
        nats, n = token_cross_entropy(logits, targets, mask, smoothing)
        correct = (jnp.argmax(logits, -1) == targets) * mask
        metrics["token_accuracy"] = jnp.sum(correct) / jnp.maximum(n, 1.0)
        return nats / jnp.maximum(n, 1.0), (metrics, {"step": step + 1})

    def _decoders(self, model, carry, context, max_len: int):
        greedy = decoding.greedy_decode(model.step, carry, context, bos_id=BOS_ID,
                                        eos_id=EOS_ID, max_len=max_len, pad_id=PAD_ID)
        beam = None
        if self.beam_size:
            beam = decoding.beam_search(model.step, carry, context, bos_id=BOS_ID,
                                        eos_id=EOS_ID, beam_size=self.beam_size,
                                        max_len=max_len, length_penalty=self.length_penalty,
                                        alpha=self.alpha, pad_id=PAD_ID)
        return greedy, beam

    def eval_sums(self, model, batch):
        targets, mask = batch["targets"], batch["target_mask"]
        rows = batch.get("batch_mask", jnp.ones(targets.shape[:1], bool)).astype(jnp.float32)
        mask = mask * rows[:, None]
        carry, context = model.encode(batch["src"], batch["src_lengths"])
        logits, _ = model.teacher_forced(carry, context, batch["decoder_inputs"])
        nats, n = token_cross_entropy(logits, targets, mask)
        correct = (jnp.argmax(logits, -1) == targets) * mask
        greedy, beam = self._decoders(model, carry, context, targets.shape[1])
        # Target length with its <eos>, as the decoders count theirs (a decoder that never
        # emits <eos> reports max_len = T, longer than any target).
        target_len = jnp.sum(batch["target_mask"], axis=1)
        sums = {"nats": nats, "n": n, "correct": jnp.sum(correct), "seqs": jnp.sum(rows),
                "greedy_ok": jnp.sum(jnp.all(greedy.tokens == targets, axis=1) * rows),
                "greedy_short": jnp.sum((greedy.lengths < target_len) * rows)}
        if beam is not None:
            sums["beam_ok"] = jnp.sum(jnp.all(beam.tokens[:, 0] == targets, axis=1) * rows)
            sums["beam_short"] = jnp.sum((beam.lengths[:, 0] < target_len) * rows)
        return sums

    def summarize(self, sums):
        n, seqs = float(sums["n"]), float(sums["seqs"])
        nats = float(sums["nats"]) / n
        out = {"loss": nats, "perplexity": math.exp(min(nats, 700.0)),
               "token_accuracy": float(sums["correct"]) / n,
               "greedy_exact_match": float(sums["greedy_ok"]) / seqs,
               "greedy_too_short": float(sums["greedy_short"]) / seqs}
        if "beam_ok" in sums:
            out["beam_exact_match"] = float(sums["beam_ok"]) / seqs
            out["beam_too_short"] = float(sums["beam_short"]) / seqs
        return out

    # extras -----------------------------------------------------------------
    def final_report(self, model, workdir):
        """Writes ``samples.txt`` (greedy outputs on eval problems) and, with attention and
        ``train.plots``, ``plots/attention.png`` (teacher-forced weights, 4 examples)."""
        batch = self.eval_batches(8)[0]
        graphdef, state = nnx.split(model)

        @jax.jit
        def run(state, batch):
            m = nnx.merge(graphdef, state)
            carry, context = m.encode(batch["src"], batch["src_lengths"])
            g = decoding.greedy_decode(m.step, carry, context, bos_id=BOS_ID, eos_id=EOS_ID,
                                       max_len=batch["targets"].shape[1], pad_id=PAD_ID)
            _, w = m.teacher_forced(carry, context, batch["decoder_inputs"])
            return g.tokens, w

        tokens, weights = jax.device_get(run(state, {k: jnp.asarray(v)
                                                     for k, v in batch.items()}))
        lines = []
        for i in range(tokens.shape[0]):
            src = "".join(self.tokens[t] for t in batch["src"][i, : batch["src_lengths"][i]])
            lines.append(f"{src}\t{self.decode_target(tokens[i])}\t"
                         f"(target {self.decode_target(batch['targets'][i])})")
        Path(workdir, "samples.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if weights is not None and self.config.train.plots:
            self._plot_attention(Path(workdir) / "plots" / "attention.png", batch, weights)
        return {}

    def _plot_attention(self, path: Path, batch, weights) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path.parent.mkdir(parents=True, exist_ok=True)
        n = min(4, weights.shape[0])
        fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
        for i, ax in enumerate(axes[0]):
            s = int(batch["src_lengths"][i])
            t = int(batch["target_mask"][i].sum())
            ax.imshow(weights[i, :t, :s], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(s), [self.tokens[x] for x in batch["src"][i, :s]])
            ax.set_yticks(range(t), [self.tokens[x] for x in batch["targets"][i, :t]])
            ax.set_xlabel("source")
        axes[0][0].set_ylabel("target")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)


TASK = Seq2SeqTask
