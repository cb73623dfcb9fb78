"""Autoregressive decoding against a step function: greedy, sampling and beam search.

The decoders never see a model class. They drive one function, the *step function*:

    step_fn(carry, tokens, context) -> (carry, logits)

    carry    any pytree whose leaves all have leading axis N (an LSTM ``(h, c)`` tuple of
             (N, H) arrays, a list over L layers, attention state, a position counter ...).
             The returned carry must have the same tree structure, shapes and dtypes.
    tokens   (N,) int32, the previous token of every row (``bos_id`` on the first step).
    context  any pytree whose leaves have leading axis N (encoder outputs (N, S, H), a source
             mask (N, S), ...), or None. It is read, never returned.
    logits   (N, V) float (cast to float32 here), unnormalised scores of the next token.

Greedy and sampling call it with N = B. Beam search folds the K beams of each row into the
batch axis, N = B*K, row-major (row b's beams are N indices b*K .. b*K+K-1): the initial carry
and the context are tiled with ``jnp.repeat(x, K, axis=0)``, and after every step the carry is
reordered by the backpointers with one gather on axis 0. Model parameters are therefore closed
over by ``step_fn`` (or live in an NNX module it is bound to), never put in ``context``.

Every decoder is a pure, traceable function with static shapes: one ``jax.lax.while_loop``
that stops as soon as every row is finished, or after ``max_len`` steps. Jit it from the
caller, for example ``jax.jit(lambda p, c, x: greedy_decode(partial(step, p), c, x, ...))``
with the parameters passed as an argument so that new parameters do not recompile. The
decoders do not jit themselves: a jit keyed on a closure would recompile for every new closure,
and would leak tracers when called inside an outer ``nnx.jit``.

Conventions shared by all decoders (shape letters: B batch, K beam, V vocab, T = max_len):
- The output holds the eos token itself; every position after it is ``pad_id``.
- ``lengths`` counts the emitted tokens including eos; a row that never emitted eos has
  length ``max_len``.
- ``min_len`` is the least number of tokens before eos: eos is forbidden on the steps
  t < min_len, so an eos-terminated output has length >= min_len + 1.
- ``bos_id`` may be an int or a (B,) array: a per-row first input token, e.g. the last token of
  a prompt whose earlier tokens the caller ran through the model's sequence form.
- ``banned_ids`` (greedy and sampling) are token ids that are never chosen, on any step (a
  language model's ``<pad>``/``<bos>``; banning eos means no row ends before ``max_len``).
- Every log-probability reported is under the model's own distribution ``log_softmax(logits)``,
  never the tempered, filtered, banned or eos-masked one used to choose the token.

This module must never import from ``rnnjax.train`` or ``rnnjax.data``, never build or know a
model class, and never change the carry or context tree the caller passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "LENGTH_PENALTIES",
    "BeamOutput",
    "DecodeOutput",
    "StepFn",
    "beam_search",
    "greedy_decode",
    "length_penalty_fn",
    "sample_decode",
    "sample_token",
]

Pytree = Any
StepFn = Callable[[Pytree, jax.Array, Pytree], tuple[Pytree, jax.Array]]

LENGTH_PENALTIES = ("gnmt", "average", "none")


class DecodeOutput(NamedTuple):
    """Result of greedy or sampled decoding.

    tokens:    (B, T) int32, eos included, ``pad_id`` after it.
    lengths:   (B,) int32, tokens emitted including eos (``max_len`` when eos never came).
    logprobs:  (B,) float32, sum of the model's log-probabilities of the emitted tokens.
    num_steps: () int32, how many times the while_loop called ``step_fn``.
    """

    tokens: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    num_steps: jax.Array


class BeamOutput(NamedTuple):
    """Result of beam search, best hypothesis first along axis 1.

    tokens:    (B, n_best, T) int32, eos included, ``pad_id`` after it.
    lengths:   (B, n_best) int32, tokens including eos (``max_len`` for a forced end).
    scores:    (B, n_best) float32, the length-normalised score used for ranking.
    logprobs:  (B, n_best) float32, the raw sum of the model's log-probabilities.
    num_steps: () int32, how many times the while_loop called ``step_fn``.

    A slot with no hypothesis (a row that has fewer than n_best distinct finite-probability
    sequences) has score and logprob -inf, length 0 and only ``pad_id`` tokens.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    logprobs: jax.Array
    num_steps: jax.Array


# ---------------------------------------------------------------------------------------------
# Checks shared by the decoders. They run at trace time, so they cost nothing per step.


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}.")
    return value


def _infer_batch_size(init_carry: Pytree, context: Pytree, batch_size: int | None) -> int:
    """Return B, checking that every carry and context leaf has leading axis B."""
    leaves = [("init_carry", x) for x in jax.tree.leaves(init_carry)]
    leaves += [("context", x) for x in jax.tree.leaves(context)]
    for where, leaf in leaves:
        if jnp.ndim(leaf) == 0:
            raise ValueError(
                f"every {where} leaf needs a leading batch axis, got a scalar leaf; "
                "broadcast it to shape (B, ...) before decoding."
            )
    if batch_size is None:
        if not leaves:
            raise ValueError(
                "cannot infer the batch size from an empty carry and context; pass batch_size."
            )
        batch_size = int(jnp.shape(leaves[0][1])[0])
    _check_positive_int("batch_size", batch_size, 1)
    for where, leaf in leaves:
        if jnp.shape(leaf)[0] != batch_size:
            raise ValueError(
                f"all {where} leaves must have leading axis B={batch_size}, got a leaf of shape "
                f"{jnp.shape(leaf)}; tile or slice it to the batch size."
            )
    return batch_size


def _check_step_output(old_carry: Pytree, new_carry: Pytree, logits: jax.Array, n: int) -> int:
    """Validate one step's outputs at trace time and return V."""
    old_def, new_def = jax.tree.structure(old_carry), jax.tree.structure(new_carry)
    if old_def != new_def:
        raise ValueError(
            "step_fn must return a carry with the same tree structure it was given; got "
            f"{new_def} for input {old_def}."
        )
    for old, new in zip(jax.tree.leaves(old_carry), jax.tree.leaves(new_carry)):
        if jnp.shape(old) != jnp.shape(new) or jnp.result_type(old) != jnp.result_type(new):
            raise ValueError(
                "step_fn changed a carry leaf from "
                f"{jnp.result_type(old)}{list(jnp.shape(old))} to "
                f"{jnp.result_type(new)}{list(jnp.shape(new))}; a carry leaf must keep its "
                "shape and dtype (cast it back inside step_fn)."
            )
    if jnp.ndim(logits) != 2 or jnp.shape(logits)[0] != n:
        raise ValueError(
            f"step_fn must return logits of shape (N, V) with N={n}, got {jnp.shape(logits)}."
        )
    return int(jnp.shape(logits)[1])


def _check_eos(eos_id: int, vocab: int) -> None:
    if not 0 <= eos_id < vocab:
        raise ValueError(f"eos_id={eos_id} is outside the vocabulary [0, {vocab}) of the logits.")


def _check_lengths(max_len: int, min_len: int) -> None:
    _check_positive_int("max_len", max_len, 1)
    _check_positive_int("min_len", min_len, 0)
    if min_len > max_len:
        raise ValueError(
            f"min_len={min_len} exceeds max_len={max_len}; no output could satisfy both."
        )


def _check_banned(banned_ids: Sequence[int], vocab: int) -> tuple[int, ...]:
    banned = tuple(sorted({int(i) for i in banned_ids}))
    if any(not 0 <= i < vocab for i in banned):
        raise ValueError(f"banned_ids {list(banned)} must lie in the vocabulary [0, {vocab}).")
    if len(banned) >= vocab:
        raise ValueError(f"banned_ids bans all {vocab} tokens; nothing could be chosen.")
    return banned


def _forbid_eos(logp: jax.Array, eos_id: int, forbid: jax.Array) -> jax.Array:
    """Set the eos column of (..., V) log-probs to -inf where ``forbid`` (a scalar) is True."""
    is_eos = jnp.arange(logp.shape[-1]) == eos_id
    return jnp.where(forbid & is_eos, -jnp.inf, logp)


# ---------------------------------------------------------------------------------------------
# Greedy and sampling share one loop; they differ only in how a token is chosen.


class _SeqState(NamedTuple):
    t: jax.Array  # () int32, the step about to run = tokens emitted so far
    carry: Pytree  # leaves (B, ...)
    last: jax.Array  # (B,) int32, fed to the next step
    tokens: jax.Array  # (B, T) int32
    lengths: jax.Array  # (B,) int32
    logprobs: jax.Array  # (B,) float32
    done: jax.Array  # (B,) bool, eos emitted


def _sequential_decode(
    step_fn: StepFn,
    init_carry: Pytree,
    context: Pytree,
    choose: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    bos_id: int | jax.Array,
    eos_id: int,
    pad_id: int,
    max_len: int,
    min_len: int,
    batch_size: int | None,
    banned_ids: Sequence[int] = (),
) -> DecodeOutput:
    """One-hypothesis-per-row decoding; ``choose(masked_logp (B, V), t) -> (B,)`` picks tokens."""
    _check_lengths(max_len, min_len)
    b = _infer_batch_size(init_carry, context, batch_size)
    state = _SeqState(
        t=jnp.zeros((), jnp.int32),
        carry=init_carry,
        last=jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (b,)),
        tokens=jnp.full((b, max_len), pad_id, jnp.int32),
        lengths=jnp.zeros((b,), jnp.int32),
        logprobs=jnp.zeros((b,), jnp.float32),
        done=jnp.zeros((b,), bool),
    )

    def cond(s: _SeqState) -> jax.Array:
        return (s.t < max_len) & ~jnp.all(s.done)

    def body(s: _SeqState) -> _SeqState:
        carry, logits = step_fn(s.carry, s.last, context)
        _check_eos(eos_id, _check_step_output(s.carry, carry, logits, b))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        masked = _forbid_eos(logp, eos_id, s.t < min_len)
        banned = _check_banned(banned_ids, logp.shape[-1])
        if banned:
            masked = masked.at[:, jnp.asarray(banned)].set(-jnp.inf)
        tok = choose(masked, s.t).astype(jnp.int32)
        tok_logp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
        live = ~s.done
        return _SeqState(
            t=s.t + 1,
            carry=carry,
            # Finished rows still run through step_fn (static shapes); feed them eos, a token
            # the model's embedding certainly accepts, and ignore what comes back.
            last=jnp.where(live, tok, eos_id),
            tokens=s.tokens.at[:, s.t].set(jnp.where(live, tok, pad_id)),
            lengths=jnp.where(live, s.t + 1, s.lengths),
            logprobs=jnp.where(live, s.logprobs + tok_logp, s.logprobs),
            done=s.done | (live & (tok == eos_id)),
        )

    s = jax.lax.while_loop(cond, body, state)
    return DecodeOutput(tokens=s.tokens, lengths=s.lengths, logprobs=s.logprobs, num_steps=s.t)


def greedy_decode(
    step_fn: StepFn,
    init_carry: Pytree,
    context: Pytree,
    *,
    bos_id: int | jax.Array,
    eos_id: int,
    max_len: int,
    batch_size: int | None = None,
    pad_id: int = 0,
    min_len: int = 0,
    banned_ids: Sequence[int] = (),
) -> DecodeOutput:
    """Pick the most probable token at every step (ties go to the lowest id).

    Args:
      step_fn: ``(carry, tokens (B,), context) -> (carry, logits (B, V))``.
      init_carry: pytree with leaves (B, ...).
      context: pytree with leaves (B, ...), or None.
      bos_id: first input token, an int or a (B,) array.
      eos_id: end token, in [0, V).
      max_len: T, the most tokens per row, eos included.
      batch_size: B; inferred from the carry or context leaves when None.
      pad_id: written after eos.
      min_len: eos is forbidden on the first ``min_len`` steps.
      banned_ids: static token ids that are never chosen.

    Returns:
      DecodeOutput with tokens (B, T), lengths (B,), logprobs (B,), num_steps ().
    """

    def choose(masked_logp: jax.Array, t: jax.Array) -> jax.Array:
        del t
        return jnp.argmax(masked_logp, axis=-1)

    return _sequential_decode(
        step_fn, init_carry, context, choose, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
        max_len=max_len, min_len=min_len, batch_size=batch_size, banned_ids=banned_ids,
    )


def _check_sampling(temperature: Any, top_k: int | None, top_p: Any) -> None:
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
    if top_k is not None:
        _check_positive_int("top_k", top_k, 1)
    if isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (None turns it off), got {top_p}.")


def sample_token(
    key: jax.Array,
    logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
) -> jax.Array:
    """Draw one token per row of ``logits`` (N, V) with temperature, top-k and top-p filtering.

    In this order (the Hugging Face order):
      1. divided by ``temperature``;
      2. ``top_k``: only the k most probable tokens are kept (exactly k, ties broken by id);
      3. ``top_p``: of what is left, renormalised, the smallest most-probable-first set whose
         mass reaches ``top_p`` is kept (the top token is always kept).
    ``temperature == 0`` (it may be a traced scalar) gives the argmax (ties to the lowest id);
    top-k and top-p cannot change it since they always keep the argmax. ``logits`` may be
    unnormalised or log-probabilities: the draw is the same.

    Args:
      key: a PRNG key, used once for all rows.
      logits: (N, V) float.
      temperature: >= 0, a float or a traced scalar.
      top_k: None, or a static int in [1, V].
      top_p: None, or a float (or traced scalar) in (0, 1].

    Returns:
      (N,) int32 token ids.
    """
    _check_sampling(temperature, top_k, top_p)
    vocab = logits.shape[-1]
    if top_k is not None and top_k > vocab:
        raise ValueError(
            f"top_k={top_k} exceeds the vocabulary size V={vocab}; pass top_k=None for no "
            "top-k filtering."
        )
    logits = logits.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    # The where below discards this branch at temperature 0, so any inf it makes is harmless.
    scaled = logits / jnp.maximum(temperature, jnp.finfo(jnp.float32).tiny)
    if top_k is None and top_p is None:
        sampled = jax.random.categorical(key, scaled, axis=-1)
    else:
        # Work in the sorted space: the top-k set is its first k columns, and the nucleus is a
        # prefix of it, so one sort serves both filters and ties cannot let extra tokens in.
        vals, ids = jax.lax.top_k(scaled, vocab if top_k is None else top_k)
        if top_p is not None:
            probs = jax.nn.softmax(vals, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            vals = jnp.where(mass_before < top_p, vals, -jnp.inf)
        pick = jax.random.categorical(key, vals, axis=-1)
        sampled = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def sample_decode(
    step_fn: StepFn,
    init_carry: Pytree,
    context: Pytree,
    *,
    bos_id: int | jax.Array,
    eos_id: int,
    max_len: int,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    batch_size: int | None = None,
    pad_id: int = 0,
    min_len: int = 0,
    banned_ids: Sequence[int] = (),
) -> DecodeOutput:
    """Ancestral sampling with temperature, top-k and top-p (nucleus) filtering.

    Each step draws the token with :func:`sample_token` from the model's log-probabilities,
    eos masked before ``min_len`` and ``banned_ids`` masked on every step. ``temperature == 0``
    gives the argmax, so the output equals :func:`greedy_decode` exactly. Step t draws with
    ``jax.random.fold_in(rng, t)``.

    The reported ``logprobs`` are under the model's own, untempered and unfiltered distribution
    ``log_softmax(logits)``: that is the number that scores a sample against the model (for
    perplexity, reranking, or comparison with beam search). The log-probability under the
    filtered sampling distribution is not reported.

    Args:
      rng: a PRNG key.
      temperature: >= 0, a float or a traced scalar.
      top_k: None, or a static int in [1, V].
      top_p: None, or a float (or traced scalar) in (0, 1].
      Others: as in :func:`greedy_decode`.

    Returns:
      DecodeOutput with tokens (B, T), lengths (B,), logprobs (B,), num_steps ().
    """
    _check_sampling(temperature, top_k, top_p)

    def choose(masked_logp: jax.Array, t: jax.Array) -> jax.Array:
        return sample_token(jax.random.fold_in(rng, t), masked_logp, temperature=temperature,
                            top_k=top_k, top_p=top_p)

    return _sequential_decode(
        step_fn, init_carry, context, choose, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
        max_len=max_len, min_len=min_len, batch_size=batch_size, banned_ids=banned_ids,
    )


# ---------------------------------------------------------------------------------------------
# Beam search.


def length_penalty_fn(
    name: str, alpha: float | jax.Array = 0.6
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Return ``normalise(logprob, length) -> score`` for a length-penalty name.

    'gnmt':    logprob / ((5 + length) / 6) ** alpha   (Wu et al. 2016)
    'average': logprob / length
    'none':    logprob
    """
    if name == "gnmt":
        return lambda logp, length: logp / ((5.0 + length) / 6.0) ** alpha
    if name == "average":
        return lambda logp, length: logp / length
    if name == "none":
        return lambda logp, length: logp
    raise ValueError(f"unknown length_penalty {name!r}; choose one of {LENGTH_PENALTIES}.")


class _BeamState(NamedTuple):
    t: jax.Array  # () int32, tokens in every live hypothesis
    carry: Pytree  # leaves (B*K, ...)
    last: jax.Array  # (B, K) int32, last token of each live hypothesis
    live_seqs: jax.Array  # (B, K, T) int32
    live_logp: jax.Array  # (B, K) float32, -inf marks an empty (dead) slot
    fin_seqs: jax.Array  # (B, K, T) int32
    fin_scores: jax.Array  # (B, K) float32, sorted descending, -inf marks an empty slot
    fin_logp: jax.Array  # (B, K) float32
    fin_lengths: jax.Array  # (B, K) int32
    done: jax.Array  # (B,) bool, no live hypothesis can still enter the finished buffer


def _merge_finished(s: _BeamState, seqs, scores, logp, lengths):
    """Keep the K best of the finished buffer and K candidates; old entries win ties."""
    k = s.fin_scores.shape[1]
    all_scores = jnp.concatenate([s.fin_scores, scores], axis=1)
    top, idx = jax.lax.top_k(all_scores, k)

    def pick(old, new):
        both = jnp.concatenate([old, new], axis=1)
        index = idx.reshape(idx.shape + (1,) * (both.ndim - 2))
        return jnp.take_along_axis(both, index, axis=1)

    return (
        pick(s.fin_seqs, seqs),
        top,
        pick(s.fin_logp, logp),
        pick(s.fin_lengths, jnp.broadcast_to(lengths, scores.shape).astype(jnp.int32)),
    )


def beam_search(
    step_fn: StepFn,
    init_carry: Pytree,
    context: Pytree,
    *,
    bos_id: int | jax.Array,
    eos_id: int,
    beam_size: int,
    max_len: int,
    min_len: int = 0,
    length_penalty: str = "gnmt",
    alpha: float | jax.Array = 0.6,
    n_best: int = 1,
    batch_size: int | None = None,
    pad_id: int = 0,
    early_stop: bool = True,
) -> BeamOutput:
    """Beam search with a separate finished buffer and a length-normalised ranking.

    Each row keeps K live hypotheses (no eos yet) and a finished buffer of the K best complete
    ones, as in the flax/t5x/OpenNMT designs. Step t expands every live hypothesis by every
    token, takes the K best of the K*V candidates by raw log-probability, sends those that end
    in eos to the finished buffer (ranked by the length-normalised score) and keeps the others
    live; a live slot whose candidate went to the buffer stays empty (-inf) for this step and
    is refilled at the next one. Because eos competes with the other tokens for the K slots,
    ``beam_size=1`` is exactly greedy decoding. eos is forbidden on the first ``min_len``
    steps (its log-probability is not renormalised away: scores stay under the model).

    Ending. Live hypotheses still open after ``max_len`` steps are treated as finished, with
    length ``max_len`` and no eos, and compete for the buffer with their normalised score.

    Early stop. A row is done once no live hypothesis can beat the worst entry of its (full)
    finished buffer. The bound: any completion Y' of a live Y of t+1 tokens has length
    l in [min(t+2, T), T] and logprob(Y') <= logprob(Y) <= 0, and every penalty here has
    lp(l) > 0 monotone in l, so score(Y') = logprob(Y')/lp(l) <= logprob(Y)/lp(l)
    <= max(logprob(Y)/lp(min(t+2, T)), logprob(Y)/lp(T)). For gnmt with alpha >= 0 and for
    'average' that is logprob(Y)/lp(T) (the penalty at max_len); for 'none' it is logprob(Y).
    A row whose bound is <= its worst finished score can only tie, and ties keep the old entry,
    so stopping it never changes the result: ``early_stop=False``, which stops a row only when
    it has no live hypothesis left, gives the same output. The while_loop exits once every row
    is done, or after T steps.

    Args:
      step_fn: ``(carry, tokens (B*K,), context) -> (carry, logits (B*K, V))``.
      init_carry: pytree with leaves (B, ...); tiled to (B*K, ...) here.
      context: pytree with leaves (B, ...) or None; tiled to (B*K, ...) here.
      bos_id: first input token, an int or a (B,) array.
      eos_id: end token, in [0, V).
      beam_size: K >= 1.
      max_len: T, the most tokens per hypothesis, eos included.
      min_len: eos is forbidden on the first ``min_len`` steps.
      length_penalty: 'gnmt', 'average' or 'none' (see :func:`length_penalty_fn`).
      alpha: the gnmt exponent (ignored otherwise); a float or traced scalar.
      n_best: how many hypotheses per row to return, 1 <= n_best <= K.
      batch_size: B; inferred from the carry or context leaves when None.
      pad_id: written after eos and into empty slots.
      early_stop: stop rows by the bound above (turn off only to check it).

    Returns:
      BeamOutput with tokens (B, n_best, T), lengths, scores and logprobs (B, n_best), best
      first by score, and num_steps ().
    """
    _check_lengths(max_len, min_len)
    k = _check_positive_int("beam_size", beam_size, 1)
    _check_positive_int("n_best", n_best, 1)
    if n_best > k:
        raise ValueError(f"n_best={n_best} exceeds beam_size={k}; the buffer holds K hypotheses.")
    normalise = length_penalty_fn(length_penalty, alpha)
    b = _infer_batch_size(init_carry, context, batch_size)
    n = b * k

    def tile(x: jax.Array) -> jax.Array:
        return jnp.repeat(x, k, axis=0)

    context = jax.tree.map(tile, context)
    neg_inf = jnp.float32(-jnp.inf)
    # Only beam 0 is alive at the start: K identical copies would fill the beam with duplicates.
    live_logp = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)
    state = _BeamState(
        t=jnp.zeros((), jnp.int32),
        carry=jax.tree.map(tile, init_carry),
        last=tile(jnp.broadcast_to(jnp.asarray(bos_id, jnp.int32), (b,))).reshape(b, k),
        live_seqs=jnp.full((b, k, max_len), pad_id, jnp.int32),
        live_logp=jnp.broadcast_to(live_logp, (b, k)).astype(jnp.float32),
        fin_seqs=jnp.full((b, k, max_len), pad_id, jnp.int32),
        fin_scores=jnp.full((b, k), neg_inf),
        fin_logp=jnp.full((b, k), neg_inf),
        fin_lengths=jnp.zeros((b, k), jnp.int32),
        done=jnp.zeros((b,), bool),
    )

    def cond(s: _BeamState) -> jax.Array:
        return (s.t < max_len) & ~jnp.all(s.done)

    def body(s: _BeamState) -> _BeamState:
        carry, logits = step_fn(s.carry, s.last.reshape(n), context)
        vocab = _check_step_output(s.carry, carry, logits, n)
        _check_eos(eos_id, vocab)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        logp = _forbid_eos(logp, eos_id, s.t < min_len)
        cand = (s.live_logp[:, :, None] + logp).reshape(b, k * vocab)
        top_logp, flat = jax.lax.top_k(cand, k)  # (B, K), sorted
        beam, tok = flat // vocab, (flat % vocab).astype(jnp.int32)

        # Backpointers: one gather on the folded axis 0 for the carry and the sequences.
        src = (jnp.arange(b)[:, None] * k + beam).reshape(n)
        carry = jax.tree.map(lambda x: x[src], carry)
        seqs = s.live_seqs.reshape(n, max_len)[src].reshape(b, k, max_len)
        seqs = seqs.at[:, :, s.t].set(tok)

        ends = tok == eos_id
        fin_logp = jnp.where(ends, top_logp, neg_inf)
        fin = _merge_finished(s, seqs, normalise(fin_logp, s.t + 1), fin_logp, s.t + 1)
        live_logp = jnp.where(ends, neg_inf, top_logp)

        if early_stop:
            best_live = jnp.max(live_logp, axis=1)  # (B,) <= 0
            shortest = jnp.minimum(s.t + 2, max_len)
            bound = jnp.maximum(normalise(best_live, shortest), normalise(best_live, max_len))
            done = s.done | (bound <= fin[1][:, -1])
        else:
            done = s.done | jnp.all(live_logp == neg_inf, axis=1)
        # Emptying a done row's live slots keeps it frozen: its candidates are all -inf.
        live_logp = jnp.where(done[:, None], neg_inf, live_logp)
        return _BeamState(
            t=s.t + 1, carry=carry, last=tok, live_seqs=seqs, live_logp=live_logp,
            fin_seqs=fin[0], fin_scores=fin[1], fin_logp=fin[2], fin_lengths=fin[3], done=done,
        )

    s = jax.lax.while_loop(cond, body, state)
    # Rows still open ran all T steps: their live hypotheses end here, at length T. Done rows
    # have only -inf live slots, which cannot displace anything.
    fin_seqs, scores, logprobs, lengths = _merge_finished(
        s, s.live_seqs, normalise(s.live_logp, max_len), s.live_logp, max_len
    )
    scores, logprobs = scores[:, :n_best], logprobs[:, :n_best]
    valid = scores > neg_inf
    return BeamOutput(
        tokens=jnp.where(valid[:, :, None], fin_seqs[:, :n_best], pad_id),
        lengths=jnp.where(valid, lengths[:, :n_best], 0),
        scores=scores,
        logprobs=jnp.where(valid, logprobs, neg_inf),
        num_steps=s.t,
    )
