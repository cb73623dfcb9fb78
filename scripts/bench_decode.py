#!/usr/bin/env python
"""Benchmark jit beam search against a plain Python-loop beam search over the same seq2seq model.

All decode the same batch of source sequences with the same model, beam size, length
penalty and stopping rule, and their best hypotheses and scores are compared:

* ``jit``: :func:`rnnjax.decoding.beam_search` over ``Seq2Seq.step``, encoder included, in one
  ``jax.jit`` (a single ``lax.while_loop`` on the device). Its compile time (lower + compile)
  is measured separately.
* ``python`` (``speedup``): the textbook loop at its fastest. The encoder and the single
  decoder step are jitted (the step returns log-probabilities); everything else runs in Python
  per time step: numpy top-k over the ``K*V`` candidates, backpointers, the
  finished-hypothesis buffer with its normalised scores and the early-stop bound, and a jitted
  gather that reorders the carry. Same semantics as :func:`rnnjax.decoding.beam_search`.
* ``eager`` (``speedup_vs_eager``): the same Python search with ``model.encode`` and
  ``model.step`` called without ``jax.jit``, every operation dispatched on its own: the loop
  as first written, before anyone jits the step. Slow, so it is timed ``--eager-repeats``
  times.

A fourth timing, the compute floor, is a greedy decode of all ``N = B*K`` rows in one jitted
``lax.scan``: the encoder, then ``max_len`` decoder steps on data-dependent tokens with full
logits, no search and no early exit. That is the model work of any beam search that steps
all ``B*K`` rows, so ``python / floor`` (``max_speedup_over_floor``) bounds what a jit beam
search can gain over the jitted-step loop on that model and machine. On a 2-core CPU the
model step, not the Python loop, dominates at batch 64: the bound is 1.6-3x there.

Runs alternate (jit, python, floor, eager, jit, ...) so machine noise hits all alike; the JSON
reports medians, sequences/second and the ratios. Usage::

    python scripts/bench_decode.py                          # random addition model, B=64, K=4
    python scripts/bench_decode.py --workdir runs/addition  # a trained workdir
    python scripts/bench_decode.py --config configs/reverse.py --repeats 5
    python scripts/bench_decode.py --set model.hidden=64

It never changes library defaults; the allocator tuning (docs/performance.md §3) is applied in
its own
process only and recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/addition.py",
                   help="config spec for a randomly initialised model (ignored with --workdir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the random model, e.g. --set model.hidden=64")
    p.add_argument("--workdir", default=None, help="benchmark a trained seq2seq workdir instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=0, help="0 = the task's target length")
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each implementation")
    p.add_argument("--eager-repeats", type=int, default=3,
                   help="timed runs of the eager Python loop (slow; 0 skips it)")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--out", default="bench_results/bench_decode.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.batch_size < 1 or args.beam_size < 1 or args.repeats < 1 or args.eager_repeats < 0:
        raise ValueError("--batch-size, --beam-size and --repeats must be >= 1, "
                         "--eager-repeats >= 0")
    malloc = None
    if args.malloc == "tuned":
        from rnnjax._malloc import tune_malloc  # before jax allocates anything

        malloc = tune_malloc()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rnnjax import decoding
    from rnnjax.configlib import load_config
    from rnnjax.data.text import BOS_ID, EOS_ID, PAD_ID
    from rnnjax.inference import load_for_inference
    from rnnjax.tasks.base import build

    if args.workdir:
        config, task, model, step = load_for_inference(args.workdir)
        source = f"workdir {args.workdir} (step {step})"
    else:
        config = load_config(args.config, args.set)
        task, model = build(config)
        model.eval()
        source = f"random init from {args.config} {' '.join(args.set)}".strip()
    if config.task != "seq2seq":
        raise ValueError(f"bench_decode needs a seq2seq model, got task {config.task!r}")
    B, K = args.batch_size, args.beam_size
    batch = task.generate(np.random.default_rng([config.seed, 99]), B)
    src, lengths = jnp.asarray(batch["src"]), jnp.asarray(batch["src_lengths"])
    T = args.max_len or batch["targets"].shape[1]
    lp = task.length_penalty
    alpha = task.alpha
    normalise = decoding.length_penalty_fn(lp, alpha)
    graphdef, state = nnx.split(model)

    # ---------------------------------------------------------------- jit beam search
    def jit_beam(state, src, lengths):
        m = nnx.merge(graphdef, state)
        carry, context = m.encode(src, lengths)
        out = decoding.beam_search(m.step, carry, context, bos_id=BOS_ID, eos_id=EOS_ID,
                                   beam_size=K, max_len=T, length_penalty=lp, alpha=alpha,
                                   pad_id=PAD_ID)
        return out.tokens[:, 0], out.scores[:, 0], out.num_steps

    t0 = time.perf_counter()
    compiled = jax.jit(jit_beam).lower(state, src, lengths).compile()
    compile_s = time.perf_counter() - t0

    def run_jit():
        return jax.block_until_ready(compiled(state, src, lengths))

    # ---------------------------------------------------------------- Python-loop beam search
    # The model calls of the Python loop, written once; they run jitted or eagerly.
    def encode_fn(m, src, lengths):
        carry, context = m.encode(src, lengths)
        tile = lambda x: jnp.repeat(x, K, axis=0)  # noqa: E731
        return jax.tree.map(tile, carry), jax.tree.map(tile, context)

    def step_fn(m, carry, tokens, context):
        carry, logits = m.step(carry, tokens, context)
        return carry, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    def reorder_fn(carry, src_idx):
        return jax.tree.map(lambda x: x[src_idx], carry)

    encode_jit = jax.jit(lambda st, *a: encode_fn(nnx.merge(graphdef, st), *a))
    step_jit = jax.jit(lambda st, *a: step_fn(nnx.merge(graphdef, st), *a))
    jitted_calls = (lambda *a: encode_jit(state, *a), lambda *a: step_jit(state, *a),
                    jax.jit(reorder_fn))
    eager_calls = (lambda *a: encode_fn(model, *a), lambda *a: step_fn(model, *a), reorder_fn)

    def python_beam_search(calls):
        encode, step, reorder = calls
        carry, context = encode(src, lengths)
        neg = -np.inf
        live_logp = np.full((B, K), neg, np.float32)
        live_logp[:, 0] = 0.0  # one live beam at the start, as in beam_search
        live_seqs = np.full((B, K, T), PAD_ID, np.int32)
        fin_seqs = np.full((B, K, T), PAD_ID, np.int32)
        fin_scores = np.full((B, K), neg, np.float32)
        fin_logp = np.full((B, K), neg, np.float32)
        done = np.zeros(B, bool)
        last = np.full(B * K, BOS_ID, np.int32)
        rows = np.arange(B)[:, None]

        def merge(seqs, scores, logp):
            all_scores = np.concatenate([fin_scores, scores], 1)
            idx = np.argsort(-all_scores, axis=1, kind="stable")[:, :K]  # old entries win ties
            pick = lambda old, new: np.take_along_axis(  # noqa: E731
                np.concatenate([old, new], 1),
                idx.reshape(idx.shape + (1,) * (old.ndim - 2)), 1)
            return pick(fin_seqs, seqs), np.take_along_axis(all_scores, idx, 1), \
                pick(fin_logp, logp)

        steps = 0
        for t in range(T):
            if done.all():
                break
            carry, logp = step(carry, jnp.asarray(last), context)
            steps += 1
            logp = np.asarray(logp).reshape(B, K, -1)
            V = logp.shape[-1]
            cand = (live_logp[:, :, None] + logp).reshape(B, K * V)
            flat = np.argsort(-cand, axis=1, kind="stable")[:, :K]
            top = np.take_along_axis(cand, flat, 1)
            beam, tok = flat // V, (flat % V).astype(np.int32)
            src_idx = (rows * K + beam).reshape(-1)
            carry = reorder(carry, jnp.asarray(src_idx))
            seqs = live_seqs.reshape(B * K, T)[src_idx].reshape(B, K, T)
            seqs[:, :, t] = tok
            ends = tok == EOS_ID
            new_logp = np.where(ends, top, neg).astype(np.float32)
            with np.errstate(invalid="ignore"):
                new_scores = np.asarray(normalise(new_logp, t + 1), np.float32)
            fin_seqs, fin_scores, fin_logp = merge(seqs, new_scores, new_logp)
            live_logp = np.where(ends, neg, top).astype(np.float32)
            best = live_logp.max(1)
            shortest = min(t + 2, T)
            bound = np.maximum(np.asarray(normalise(best, shortest)),
                               np.asarray(normalise(best, T)))
            done |= bound <= fin_scores[:, -1]
            live_logp[done] = neg
            live_seqs, last = seqs, tok.reshape(-1)
        fin_seqs, fin_scores, fin_logp = merge(
            live_seqs, np.asarray(normalise(live_logp, T), np.float32), live_logp)
        return fin_seqs[:, 0], fin_scores[:, 0], steps

    def run_python():
        return python_beam_search(jitted_calls)

    def run_eager():
        return python_beam_search(eager_calls)

    # ---------------------------------------------------------------- the compute floor
    # A greedy decode of all N = B*K rows, T steps, no search and no early exit: the model
    # work (encoder, then T steps on data-dependent tokens, full logits) of any beam search
    # that runs every step on B*K rows.
    @jax.jit
    def floor(state, src, lengths):
        m = nnx.merge(graphdef, state)
        carry, context = encode_fn(m, src, lengths)

        def body(c, _):
            carry, tokens = c
            carry, logp = step_fn(m, carry, tokens, context)
            return (carry, jnp.argmax(logp, axis=-1).astype(jnp.int32)), None

        bos = jnp.full((B * K,), BOS_ID, jnp.int32)
        (_, tokens), _ = jax.lax.scan(body, (carry, bos), None, length=T)
        return tokens

    def run_floor():
        return jax.block_until_ready(floor(state, src, lengths))

    # ---------------------------------------------------------------- warm-up, check, time
    t0 = time.perf_counter()
    py_out = run_python()  # compiles encode/step/reorder
    py_first_s = time.perf_counter() - t0
    jit_out = jax.device_get(run_jit())
    outputs = {"python_loop": py_out}
    if args.eager_repeats:
        outputs["python_eager"] = run_eager()

    def agreement(other):
        finite = np.isfinite(jit_out[1])
        return {"best_hypothesis_equal": float(np.all(jit_out[0] == other[0], axis=1).mean()),
                "max_abs_score_diff": float(np.max(np.abs(
                    np.where(finite, jit_out[1] - np.where(finite, other[1], 0.0), 0.0)))),
                "decode_steps": int(other[2])}

    run_floor()
    runs = {"jit": run_jit, "python": run_python, "floor": run_floor, "eager": run_eager}
    times = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, fn in runs.items():
            if name == "eager" and r >= args.eager_repeats:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    result = {
        "model": source,
        "config": {"task": config.task, "data": config.data.name, "cell": config.model.cell,
                   "hidden": config.model.hidden, "attention": config.model.get("attention")},
        "batch_size": B, "beam_size": K, "max_len": T, "length_penalty": lp, "alpha": alpha,
        "jit": {"compile_s": compile_s, "median_s": med["jit"], "seqs_per_s": B / med["jit"],
                "decode_steps": int(jit_out[2]), "runs_s": times["jit"]},
        "python_loop": {"what": "jitted encoder/step/reorder, numpy search",
                        "first_call_s": py_first_s, "median_s": med["python"],
                        "seqs_per_s": B / med["python"], "runs_s": times["python"]},
        "compute_floor": {"median_s": med["floor"],
                          "what": f"greedy decode of N={B * K} rows: encoder + {T} steps, "
                                  "no search, no early exit"},
        "speedup": med["python"] / med["jit"],
        "max_speedup_over_floor": med["python"] / med["floor"],
        "agreement": {name: agreement(out) for name, out in outputs.items()},
        "env": {"device": str(jax.devices()[0]), "jax": jax.__version__,
                "python": platform.python_version(), "cpus": os.cpu_count(),
                "malloc": malloc or "default"},
    }
    if "eager" in med:
        result["python_eager"] = {"what": "the same search, model.encode/step called eagerly",
                                  "median_s": med["eager"], "seqs_per_s": B / med["eager"],
                                  "runs_s": times["eager"]}
        result["speedup_vs_eager"] = med["eager"] / med["jit"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    brief = {k: result[k] for k in ("model", "batch_size", "beam_size", "max_len", "speedup",
                                    "speedup_vs_eager", "max_speedup_over_floor", "agreement")
             if k in result}
    for name in ("jit", "python_loop", "python_eager", "compute_floor"):
        if name in result:
            brief[name] = {k: round(v, 5) for k, v in result[name].items()
                           if isinstance(v, float)}
    print(json.dumps(brief, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
