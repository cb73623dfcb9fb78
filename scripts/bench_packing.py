#!/usr/bin/env python
"""Packed vs padded training throughput for a text classifier, and the cost of resets.

On the SMS-style builtin data (``rnnjax/data/builtin/sms_sample.tsv``, char level; its
30 texts repeated ``--copies`` times, so batches are full), one jitted training step
(forward, backward, Adam) of the classifier ``SequenceModel`` (LSTM, mean pooling) is
timed three ways, alternately (A, B, C, A, B, C ...) so machine noise hits all alike:

* ``padded``: one text per row, padded to the batch's longest rounded up to 32 (the
  classification task's bucketing, ``data.bucket=True``), B texts per batch;
* ``padded_max_len``: one text per row, padded to ``T = max_len`` (``data.bucket=False``);
* ``packed``: texts packed by first-fit decreasing into rows of ``T = max_len``
  (``data.pack=True``), with ``segment_ids``, so every segment restarts its carry;
* ``packed_no_resets``: the same packed rows and per-segment pooling, but without the
  resets (the carry flows across segments: wrong outputs, the same work otherwise): the
  reset overhead is the step time of ``packed`` over this one, minus 1.

Reported: real (non-pad) tokens per second (median step time over ``--steps``), rows per
batch, and the fill (real tokens / B x T). Writes JSON to ``--out``.

    python scripts/bench_packing.py --steps 30 --out docs/bench/bench_packing_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rnnjax.data import batching, packing, text
from rnnjax.data.streams import resolve_path
from rnnjax.models.sequence import SequenceModel

#: The model keys of ``model.arch="blocks"``, at values that the "rnn" stack ignores.
RNN_ARCH = dict(arch="rnn", conv_kernel=0, output_gate=False, mlp_expansion=0.0, num_heads=1,
                max_len=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--max-len", type=int, default=160)
    p.add_argument("--copies", type=int, default=40)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    ds = text.load_tsv_classification(resolve_path("builtin:sms_sample"))
    tok = text.Tokenizer("char")
    vocab = text.Vocabulary.build(t for s in ds.texts for t in tok(s))
    seqs, _ = text.encode_texts(ds.texts * args.copies, tok, vocab)
    seqs = [np.asarray(s[: args.max_len], np.int32) for s in seqs if len(s)]
    labels = np.tile(ds.labels, args.copies)[: len(seqs)]
    lengths = np.array([len(s) for s in seqs])
    B, T = args.batch, args.max_len

    padded = batching.BatchIterator(
        len(seqs), B, seed=0, lengths=lengths,
        collate=batching.sequence_collate(seqs, {"targets": labels}, max_len=T, multiple_of=32))
    padded_max = batching.BatchIterator(
        len(seqs), B, seed=0,
        collate=batching.sequence_collate(seqs, {"targets": labels}, max_len=T,
                                          pad_to_max_len=True))
    packed = packing.PackedIterator(seqs, T, B, seed=0, segment_values={"targets": labels})

    model = SequenceModel(out_features=2, cell=args.cell, hidden=args.hidden, num_layers=1,
                          bidirectional=False, dropout=0.0, unroll=1, cell_kwargs={},
                          pooling="mean", head_hidden=(), embed_dim=32,
                          freeze_embedding=False, vocab_size=len(vocab), rngs=nnx.Rngs(0),
                          **RNN_ARCH)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)

    def make_step(kind):
        def loss_fn(params, batch):
            m = nnx.merge(graphdef, params, rest)
            if kind in ("padded", "padded_max_len"):
                logits = m(batch["inputs"], batch["lengths"])
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                    logits, batch["targets"]))
            if kind == "packed":
                logits = m(batch["inputs"], batch["lengths"], segment_ids=batch["segment_ids"],
                           segment_starts=batch["segment_starts"],
                           segment_ends=batch["segment_ends"])
                nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
                w = batch["segment_mask"].astype(nll.dtype)
                return jnp.sum(nll * w) / jnp.sum(w)
            # The packed computation without the resets: the same rows, the same
            # per-segment mean pooling, but the carry flows across segment starts.
            x = m.embed(batch["inputs"])
            ys = m.encoder(x, seq_lengths=batch["lengths"])
            S = batch["segment_mask"].shape[1]
            member = (batch["segment_ids"][:, None, :]
                      == jnp.arange(1, S + 1)[None, :, None]).astype(ys.dtype)
            pooled = jnp.einsum("bst,btf->bsf", member, ys) / jnp.maximum(
                jnp.sum(member, -1, keepdims=True), 1.0)
            nll = optax.softmax_cross_entropy_with_integer_labels(m.head(pooled),
                                                                  batch["targets"])
            w = batch["segment_mask"].astype(nll.dtype)
            return jnp.sum(nll * w) / jnp.sum(w)

        @jax.jit
        def step(params, opt_state, batch):
            loss, g = jax.value_and_grad(loss_fn)(params, batch)
            u, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, u), opt_state, loss

        return step

    kinds = {"padded": padded, "padded_max_len": padded_max, "packed": packed,
             "packed_no_resets": packed}
    steps = {k: make_step(k) for k in kinds}
    state = {k: (params, tx.init(params)) for k in kinds}
    batches = {k: [{n: jnp.asarray(v) for n, v in next(it).items()} for _ in range(8)]
               for k, it in (("padded", padded), ("padded_max_len", padded_max),
                             ("packed", packed))}
    batches["packed_no_resets"] = batches["packed"]
    times = {k: [] for k in kinds}
    real = {k: float(np.mean([float(jnp.sum(b["lengths"])) for b in batches[k]]))
            for k in kinds}
    cells = {k: float(np.mean([b["inputs"].size for b in batches[k]])) for k in kinds}
    for k in kinds:  # compile every shape first
        for b in batches[k]:
            out = steps[k](*state[k], b)
            jax.block_until_ready(out)
    for i in range(args.steps):
        for k in kinds:
            b = batches[k][i % len(batches[k])]
            t0 = time.perf_counter()
            p_, o_, loss = steps[k](*state[k], b)
            jax.block_until_ready(loss)
            times[k].append(time.perf_counter() - t0)
            state[k] = (p_, o_)
    res = {}
    for k in kinds:
        med = statistics.median(times[k])
        res[k] = {"median_step_s": med, "real_tokens_per_batch": real[k],
                  "fill": real[k] / cells[k], "real_tokens_per_s": real[k] / med}
    for k in ("padded", "padded_max_len"):
        res[f"packed_over_{k}_tokens_per_s"] = (res["packed"]["real_tokens_per_s"]
                                                / res[k]["real_tokens_per_s"])
    res["reset_overhead"] = (res["packed"]["median_step_s"]
                             / res["packed_no_resets"]["median_step_s"] - 1)
    out = {"args": vars(args), "packing": packed.stats, "results": res,
           "machine": platform.platform(), "jax": jax.__version__,
           "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
