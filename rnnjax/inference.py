"""Inference on a trained run directory: rebuild the model, restore it, evaluate it, and
the text front-ends that sample and decode with it.

``load_for_inference(workdir)`` reads the run's config, builds the task and the model
as training did, and restores the ``best`` or ``latest`` checkpoint's weights, those
training evaluated (with NT-ASGD the average of the iterates, which the checkpoint holds
in its optimiser state); ``run_eval`` evaluates them on the task's eval set, optionally
with evaluation settings changed (``decode.*``: beam size, length penalty) and recorded
in the workdir's ``evals/``. The command line's ``eval``, ``sample``, ``decode`` and
``diagnose`` start here:

* :func:`sample_text` (``rnnjax sample``): continuations of a prime from a language
  model, through :func:`rnnjax.decoding.sample_decode` over ``TokenModel.step``;
* :func:`decode_texts` (``rnnjax decode``): greedy, sampled or beam outputs of a
  seq2seq model for input strings.

The tasks own text <-> ids (``LMTask.encode_prime``/``decode_tokens``,
``Seq2SeqTask.encode_source``/``decode_target``); the models own their step functions;
this module joins them to the decoders and jits the whole.

This module never imports the training loop, the sweeps or the CLI: it reads a run
directory through :mod:`rnnjax.train.workdir` and evaluates with the pure steps of
:mod:`rnnjax.train.steps`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax import decoding
from rnnjax.config_schema import check_eval_only, validate
from rnnjax.configlib import apply_overrides
from rnnjax.data.text import BOS_ID, EOS_ID, PAD_ID
from rnnjax.tasks.base import build
from rnnjax.tasks.lm import NEVER_SAMPLED
from rnnjax.train.steps import evaluate, make_eval_step
from rnnjax.train.workdir import Workdir

log = logging.getLogger(__name__)


def load_for_inference(workdir: str | Path, which: str = "best",
                       overrides: Sequence[str] = ()):
    """Rebuilds the model of a workdir and restores the ``best`` or ``latest`` weights.

    The weights are those training evaluated (:meth:`Workdir.restore_params`): with
    NT-ASGD the average of the iterates, restored from the checkpoint's optimiser state,
    else the checkpoint's params. ``overrides`` (``k=v`` strings) change the run's config
    before the task is built; they may only touch evaluation settings
    (:data:`rnnjax.config_schema.EVAL_ONLY_KEYS`: the decoder, the eval batches), since
    the weights stay those that were trained. Returns ``(config, task, model, step)``
    with the model in eval mode and the checkpoint's step.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    wd = Workdir(workdir)
    config = wd.read_config()
    if overrides:
        check_eval_only([str(o).partition("=")[0].strip() for o in overrides],
                        "rnnjax eval --config.KEY",
                        "Evaluation restores the trained weights, so only evaluation "
                        "settings can change; train another run with that value (rnnjax "
                        "train --config.KEY=VALUE, or a sweep's grid).")
        config.lock()
        apply_overrides(config, list(overrides))
        validate(config)
    task, model = build(config, wd.path)
    model.eval()
    graphdef, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    params, step = wd.restore_params(task, config, model, params, which)
    model = nnx.merge(graphdef, params, rng_state, consts)
    model.eval()
    return config, task, model, step


def run_eval(workdir: str | Path, which: str = "best", overrides: Sequence[str] = (), *,
             record: bool = False) -> dict:
    """Evaluates a trained workdir on its task's eval set; returns the metrics.

    ``overrides`` change evaluation settings only (see :func:`load_for_inference`), e.g.
    ``["decode.beam_size=8", "decode.length_penalty=none"]``. With ``record`` the result
    is also written to ``<workdir>/evals/<name>.json`` (:meth:`Workdir.eval_name` of
    ``which`` and the overrides, :meth:`Workdir.write_eval`), and an error is recorded
    there before it is raised: a sweep's ``eval_grid`` runs this, through ``rnnjax eval
    --record``, once per combination.
    """
    wd = Workdir(workdir)
    name = wd.eval_name(which, overrides) if record else None
    try:
        config, task, model, step = load_for_inference(workdir, which, overrides)
        graphdef, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
        eval_step = jax.jit(make_eval_step(task, graphdef, rng_state, consts))
        metrics = evaluate(task, eval_step, params,
                           task.eval_batches(config.train.eval_batch_size),
                           lambda b: {k: jnp.asarray(v) for k, v in b.items()})
    except Exception as e:
        if record and wd.has_config():
            wd.record_eval_failure(name, f"{type(e).__name__}: {e}",
                                   traceback=traceback.format_exc(), checkpoint=which,
                                   override_args=list(overrides))
        raise
    metrics["checkpoint_step"] = step
    if record:
        applied = {}
        for item in overrides:
            key = str(item).partition("=")[0].strip()
            node = config
            for part in key.split("."):
                node = node[part]
            applied[key] = node.to_dict() if hasattr(node, "to_dict") else node
        wd.write_eval(name, checkpoint=which, checkpoint_step=step, overrides=applied,
                      eval_metrics=metrics, override_args=list(overrides))
    return metrics


# ---------------------------------------------------------------------------------------------
# rnnjax sample: a language model's continuations.


def sample_ids(model, prime_ids, length: int, *, temperature: float = 1.0, num: int = 1,
               seed: int = 0, top_k: int | None = None, top_p: float | None = None,
               banned_ids=NEVER_SAMPLED) -> np.ndarray:
    """``num`` continuations of the token ids ``prime_ids`` ``(P,)``: ``(num, length)`` int32.

    One jitted program: ``model.prefill`` runs the prime through the sequence form, then
    :func:`rnnjax.decoding.sample_decode` steps ``model.step`` from the prime's last token
    with ``PRNGKey(seed)``. ``temperature = 0`` is greedy; ``top_k`` / ``top_p`` (None = off)
    keep the k most probable tokens / the nucleus of mass p. ``banned_ids`` (by default
    ``<pad>``, ``<bos>``, ``<eos>``: see ``rnnjax.tasks.lm.NEVER_SAMPLED``) are never drawn;
    with ``<eos>`` banned every row runs the full ``length``.
    """
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    prime_ids = np.asarray(prime_ids, np.int32)
    if prime_ids.ndim != 1 or prime_ids.size == 0:
        raise ValueError(f"prime_ids must be a non-empty (P,) array, got shape {prime_ids.shape}")
    banned = tuple(int(i) for i in banned_ids)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, prime, key):
        m = nnx.merge(graphdef, state)
        carry, first = m.prefill(jnp.broadcast_to(prime, (num, prime.shape[0])))
        return decoding.sample_decode(m.step, carry, None, bos_id=first, eos_id=EOS_ID,
                                      max_len=length, rng=key, temperature=temperature,
                                      top_k=top_k, top_p=top_p, banned_ids=banned,
                                      pad_id=PAD_ID).tokens

    return np.asarray(run(state, jnp.asarray(prime_ids), jax.random.PRNGKey(seed)))


def sample_text(task, model, prime: str, length: int, *, temperature: float = 1.0, num: int = 1,
                seed: int = 0, top_k: int | None = None, top_p: float | None = None) -> list[str]:
    """``num`` continuations of ``prime`` of ``length`` tokens, as text (prime included).

    ``task`` is a language-model task (``rnnjax.tasks.lm``): unknown prime tokens map to
    ``<unk>``, an empty prime starts from ``<bos>``. Sampling is :func:`sample_ids`.
    """
    if not hasattr(task, "encode_prime"):
        raise ValueError(f"task {task.config.task!r} does not generate text; `rnnjax sample` "
                         f"needs a language-model workdir")
    allowed = len(task.vocab) - len(NEVER_SAMPLED)
    if top_k is not None and not 1 <= top_k <= allowed:
        raise ValueError(f"--top-k must be in [1, {allowed}] (the vocabulary without "
                         f"<pad>, <bos>, <eos>), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    out = sample_ids(model, task.encode_prime(prime), length, temperature=temperature, num=num,
                     seed=seed, top_k=top_k, top_p=top_p)
    return [prime + task.decode_tokens(row) for row in out]


# ---------------------------------------------------------------------------------------------
# rnnjax decode: a seq2seq model's outputs for input strings.

STRATEGIES = ("greedy", "beam", "sample")


def decode_texts(task, model, texts: list[str], *, strategy: str = "greedy", beam_size: int = 4,
                 n_best: int = 1, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, max_len: int | None = None,
                 length_penalty: str | None = None, alpha: float | None = None
                 ) -> list[list[dict[str, Any]]]:
    """Decodes input strings with a seq2seq task's model; per input, its hypotheses, best first.

    Each hypothesis is ``{"output": str, "logprob": float}`` plus ``"score"`` (the
    length-normalised beam score) for beam search. ``strategy`` is ``greedy``, ``beam``
    (``n_best`` hypotheses) or ``sample`` (``temperature``, ``top_k``, ``top_p``, ``seed``).
    ``max_len`` defaults to enough tokens for the longest input; ``length_penalty`` and
    ``alpha`` default to the run's ``config.decode``. Inputs longer than any training example
    are decoded, with a warning.
    """
    if not hasattr(task, "encode_source"):
        raise ValueError(f"task {task.config.task!r} has no decoder; `rnnjax decode` needs "
                         f"a seq2seq workdir")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {strategy!r}; known: "
                         f"{', '.join(STRATEGIES)}")
    if not texts:
        raise ValueError("no inputs to decode: give --input TEXT or --input-file PATH")
    if strategy != "beam" and n_best != 1:
        raise ValueError(f"n_best={n_best} needs --strategy beam")
    ids = [task.encode_source(t) for t in texts]
    longer = [t.strip() for t in texts if task.beyond_training(t.strip())]
    if longer:
        log.warning("%d of %d inputs are longer than any training example (%s), e.g. one of "
                    "%d characters: their outputs test length generalisation, not what was "
                    "learned.", len(longer), len(texts), task.training_lengths(),
                    len(longer[0]))
    S = max(len(x) for x in ids)
    src = np.full((len(ids), S), PAD_ID, np.int32)
    for i, x in enumerate(ids):
        src[i, : len(x)] = x
    lengths = np.asarray([len(x) for x in ids], np.int32)
    max_len = max_len or max(task.max_target_len, S + 2)
    lp = length_penalty or task.length_penalty
    al = task.alpha if alpha is None else alpha
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, src, lengths, key):
        m = nnx.merge(graphdef, state)
        carry, context = m.encode(src, lengths)
        kw = {"bos_id": BOS_ID, "eos_id": EOS_ID, "max_len": max_len, "pad_id": PAD_ID}
        if strategy == "greedy":
            return decoding.greedy_decode(m.step, carry, context, **kw)
        if strategy == "sample":
            return decoding.sample_decode(m.step, carry, context, rng=key,
                                          temperature=temperature, top_k=top_k, top_p=top_p,
                                          **kw)
        return decoding.beam_search(m.step, carry, context, beam_size=beam_size, n_best=n_best,
                                    length_penalty=lp, alpha=al, **kw)

    out = jax.device_get(run(state, jnp.asarray(src), jnp.asarray(lengths),
                             jax.random.PRNGKey(seed)))
    results = []
    for i in range(len(texts)):
        if strategy == "beam":
            hyps = [{"output": task.decode_target(out.tokens[i, j]),
                     "score": float(out.scores[i, j]), "logprob": float(out.logprobs[i, j])}
                    for j in range(n_best) if np.isfinite(out.scores[i, j])]
        else:
            hyps = [{"output": task.decode_target(out.tokens[i]),
                     "logprob": float(out.logprobs[i])}]
        results.append(hyps)
    return results
