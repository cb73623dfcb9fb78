#!/usr/bin/env python
"""Benchmark the parallel scans and chunked forms against the sequential ones: minGRU, the
LRU and the GRU, and the linear-recurrence and xLSTM families (mLSTM, Mamba-2, Gated
DeltaNet, RG-LRU, sLSTM).

What it measures, for each sequence length T, in ONE process with the
implementations run alternately (A, B, C, D, A, B, ...) so that machine noise
hits all alike:

* ``fwd``: one jitted forward pass ``y = layer(x)``, ``x`` ``(B, T, E)``;
* ``bwd``: one jitted ``jax.grad`` of ``sum(layer(x))`` with respect to the
  parameters (the forward pass included, as in training);
* the first call of each (trace + compile + one run), reported separately.

``--kinds bwd`` measures the training step alone (``fwd`` fields are then ``null``).

Each figure is the median over ``--steps`` calls after ``--warmup`` calls, each
call synchronised with ``block_until_ready``. Implementations (all
``rnnjax.nn.Recurrent`` over full-length sequences, float32 by default):

==================  ============================================================
``min_gru_assoc``   ``MinGRUCell(log_space=True, scan_mode='associative')``
``min_gru_log``     ``MinGRUCell(log_space=True, scan_mode='log_space')`` (Heinsen)
``min_gru_seq``     ``MinGRUCell(log_space=True, scan_mode='sequential')``
``gru_seq``         ``GRUCell`` (classic GRU, ``lax.scan`` or its fused CPU loop)
``lru_assoc``       ``LRUCell(scan_mode='associative')`` (complex diagonal scan)
``lru_seq``         ``LRUCell(scan_mode='sequential')``
``mlstm_chunk``     ``MLSTMCell(impl='chunkwise')``: ``lax.scan`` over T/C chunks
``mlstm_seq``       ``MLSTMCell(impl='recurrent')``: ``masked_scan`` of the step
``mamba2_chunk``    ``SSDCell(scan_mode='chunked')`` (the SSD algorithm)
``mamba2_seq``      ``SSDCell(scan_mode='sequential')``
``gdn_chunk``       ``GatedDeltaNetCell(scan_mode='chunked')`` (UT transform)
``gdn_seq``         ``GatedDeltaNetCell(scan_mode='sequential')``
``rglru_assoc``     ``RGLRUCell(scan_mode='associative')``
``rglru_seq``       ``RGLRUCell(scan_mode='sequential')``
``slstm_seq``       ``SLSTMCell`` (a step loop; the sLSTM has no parallel form)
==================  ============================================================

Heads: every multi-head family gets ``--heads`` heads (default 4, head width ``H/4``;
Mamba-2 ``state_size`` 16, Gated DeltaNet ``Dk = Dv``, the RG-LRU's ``num_heads`` is its
block-diagonal gates' block count); the chunked forms use ``--chunk`` (default 64, every
family's default). ``FAMILIES`` pairs each family's fast form with its sequential one, and
the summary prints their ratio.

The code is device-agnostic: the same command runs on CPU or GPU, and prints and
records ``jax.devices()``. On CPU, glibc malloc is tuned first
(``rnnjax._malloc.tune_malloc``, docs/performance.md §3) unless ``--malloc default``.

Usage::

    python scripts/bench_scan.py                          # T = 64 .. 4096, B=16 H=128 E=64
    python scripts/bench_scan.py --T 64,256,1024 --steps 5
    python scripts/bench_scan.py --quick                  # smoke run, all impls at T=32
    python scripts/bench_scan.py --impls min_gru_assoc,gru_seq --dtype bfloat16
    python scripts/bench_scan.py --impls mlstm,mamba2,gdn --T 256,1024  # a family: its forms

It writes ``--out`` (default ``bench_results/bench_scan.json``) and never
changes library defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

#: impl -> (registered cell name, the cell's fixed options, the options taken from the
#: command line: "heads" -> ``num_heads=--heads``, "chunk" -> ``chunk_size=--chunk``).
IMPL_CELLS = {
    "min_gru_assoc": ("min_gru", {"log_space": True, "scan_mode": "associative"}, ()),
    "min_gru_log": ("min_gru", {"log_space": True, "scan_mode": "log_space"}, ()),
    "min_gru_seq": ("min_gru", {"log_space": True, "scan_mode": "sequential"}, ()),
    "gru_seq": ("gru", {}, ()),
    "lru_assoc": ("lru", {"scan_mode": "associative"}, ()),
    "lru_seq": ("lru", {"scan_mode": "sequential"}, ()),
    "mlstm_chunk": ("mlstm", {"impl": "chunkwise"}, ("heads", "chunk")),
    "mlstm_seq": ("mlstm", {"impl": "recurrent"}, ("heads",)),
    "mamba2_chunk": ("mamba2", {"scan_mode": "chunked"}, ("heads", "chunk")),
    "mamba2_seq": ("mamba2", {"scan_mode": "sequential"}, ("heads",)),
    "gdn_chunk": ("gated_deltanet", {"scan_mode": "chunked"}, ("heads", "chunk")),
    "gdn_seq": ("gated_deltanet", {"scan_mode": "sequential"}, ("heads",)),
    "rglru_assoc": ("rglru", {"scan_mode": "associative"}, ("heads",)),
    "rglru_seq": ("rglru", {"scan_mode": "sequential"}, ("heads",)),
    "slstm_seq": ("slstm", {}, ("heads",)),
}
IMPLS = tuple(IMPL_CELLS)
#: family -> (its parallel or chunked form, its sequential form); None: it has no fast form.
#: A family name in --impls stands for its forms.
FAMILIES = {
    "min_gru": ("min_gru_assoc", "min_gru_seq"),
    "lru": ("lru_assoc", "lru_seq"),
    "mlstm": ("mlstm_chunk", "mlstm_seq"),
    "mamba2": ("mamba2_chunk", "mamba2_seq"),
    "gdn": ("gdn_chunk", "gdn_seq"),
    "rglru": ("rglru_assoc", "rglru_seq"),
    "slstm": (None, "slstm_seq"),
}
DEFAULT_T = (64, 128, 256, 512, 1024, 2048, 4096)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", default=",".join(map(str, DEFAULT_T)),
                   help="comma list of sequence lengths")
    p.add_argument("--B", type=int, default=16, help="batch size")
    p.add_argument("--H", type=int, default=128, help="hidden features")
    p.add_argument("--E", type=int, default=64, help="input features")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma list of {IMPLS} or of families {tuple(FAMILIES)}")
    p.add_argument("--heads", type=int, default=4,
                   help="num_heads of the multi-head families (mlstm, mamba2, gdn, rglru, slstm)")
    p.add_argument("--chunk", type=int, default=64, help="chunk_size of the chunked forms")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="computation dtype of the cells (parameters stay float32)")
    p.add_argument("--steps", type=int, default=20, help="timed calls per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--kinds", default="fwd,bwd",
                   help="comma list of what to time: fwd (forward), bwd (forward + backward)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: T=32, B=2, H=16, E=8, 2 heads, chunk 16, 1 timed step, "
                        "bwd only")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc (default; matters on CPU only) or leave it alone")
    p.add_argument("--out", default="bench_results/bench_scan.json", help="JSON result path")
    args = p.parse_args(argv)
    try:
        args.T = [int(t) for t in args.T.split(",") if t.strip()]
    except ValueError:
        p.error(f"--T must be a comma list of integers, got {args.T!r}")
    impls = []
    for name in (i.strip() for i in args.impls.split(",")):
        for i in FAMILIES.get(name, (name,)):
            if i and i not in impls:
                impls.append(i)
    args.impls = impls
    args.kinds = [k for k in ("fwd", "bwd") if k in {k.strip() for k in args.kinds.split(",")}]
    if args.quick:
        # Compiling is nearly all of a smoke run's time (~1 s of CPU per program at
        # XLA's optimisation level 0), so it compiles one program per impl: the training
        # step, whose forward is the fwd program. T=32 with chunk 16 still runs every
        # chunked form over two chunks.
        args.T, args.B, args.H, args.E, args.steps, args.warmup = [32], 2, 16, 8, 1, 0
        args.heads, args.chunk, args.kinds = 2, 16, ["bwd"]
    bad = [i for i in args.impls if i not in IMPLS]
    if bad or not args.impls:
        p.error(f"unknown or empty --impls {bad}; known: {list(IMPLS)}, or the families "
                f"{list(FAMILIES)}")
    if not args.kinds:
        p.error("--kinds must name fwd, bwd or both")
    if not args.T or min(args.T) < 1:
        p.error(f"--T needs lengths >= 1, got {args.T}")
    if min(args.B, args.H, args.E, args.steps, args.heads, args.chunk) < 1:
        p.error("--B, --H, --E, --steps, --heads and --chunk must be >= 1")
    if args.H % args.heads:
        p.error(f"--heads {args.heads} must divide --H {args.H}")
    return args


ARGS = parse_args()

# The allocator must be tuned before jax makes its first large buffers.
from rnnjax._malloc import malloc_for  # noqa: E402

MALLOC = malloc_for(ARGS.malloc)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from rnnjax.nn import Recurrent, make_cell  # noqa: E402


def log(*a):
    print(*a, flush=True)


def cell_kwargs(impl: str) -> dict:
    """The options ``impl``'s cell is built with (recorded with each result)."""
    _, fixed, from_args = IMPL_CELLS[impl]
    taken = {"heads": ("num_heads", ARGS.heads), "chunk": ("chunk_size", ARGS.chunk)}
    return {**fixed, **dict(taken[k] for k in from_args)}


def build_layer(impl: str, dtype) -> Recurrent:
    cell = make_cell(IMPL_CELLS[impl][0], ARGS.E, ARGS.H, dtype=dtype, rngs=nnx.Rngs(0),
                     **cell_kwargs(impl))
    return Recurrent(cell)


class Bench:
    """The jitted forward and/or gradient (``--kinds``) of one implementation at one T."""

    def __init__(self, impl: str, x, dtype):
        self.impl = impl
        graphdef, params = nnx.split(build_layer(impl, dtype))
        self.params, self.x = params, x

        def apply(params, x):
            return nnx.merge(graphdef, params)(x)

        def loss(params, x):
            return jnp.sum(apply(params, x).astype(jnp.float32))

        fns = {"fwd": jax.jit(apply), "bwd": jax.jit(jax.grad(loss))}
        self.fns = {k: fns[k] for k in ARGS.kinds}
        self.first_call_s = {k: self._time(k) for k in self.fns}  # trace + compile + run
        for _ in range(ARGS.warmup):
            for k in self.fns:
                self._time(k)

    def _time(self, kind: str) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.fns[kind](self.params, self.x))
        return time.perf_counter() - t0


def bench_T(T: int, dtype) -> list[dict]:
    x = jax.random.normal(jax.random.key(T), (ARGS.B, T, ARGS.E), jnp.float32)
    benches = [Bench(impl, x, dtype) for impl in ARGS.impls]
    times = {(b.impl, k): [] for b in benches for k in ARGS.kinds}
    for _ in range(ARGS.steps):  # interleaved: noise hits every implementation alike
        for b in benches:
            for k in ARGS.kinds:
                times[b.impl, k].append(b._time(k))
    rows = []
    for b in benches:
        row = {"T": T, "impl": b.impl}
        for k in ("fwd", "bwd"):  # a kind not measured is null, so every row has both keys
            sec = statistics.median(times[b.impl, k]) if k in ARGS.kinds else None
            row[k + "_ms"] = None if sec is None else 1e3 * sec
            row[k + "_tokens_per_s"] = None if sec is None else ARGS.B * T / sec
        row.update({"first_call_s": b.first_call_s, "steps": ARGS.steps,
                    "cell": IMPL_CELLS[b.impl][0], "cell_kwargs": cell_kwargs(b.impl)})
        rows.append(row)
        shown = "   ".join(f"{'fwd' if k == 'fwd' else 'fwd+bwd'} {row[k + '_ms']:9.3f} ms"
                           for k in ARGS.kinds)
        first = " / ".join(f"{b.first_call_s[k]:.2f}s" for k in ARGS.kinds)
        log(f"  T={T:5d} {b.impl:14s} {shown}   (first calls {first})")
    return rows


def ratio_table(rows: list[dict]) -> str:
    """Milliseconds per call, and speed-ups ``t(base) / t(impl)`` against two bases."""
    by = {(r["T"], r["impl"]): r for r in rows}
    Ts = sorted({r["T"] for r in rows})
    lines = []
    for kind in ARGS.kinds:
        title = "forward" if kind == "fwd" else "forward + backward (jax.grad of sum)"
        lines.append(f"\n{title}: ms per call (median)")
        lines.append("T".rjust(6) + "".join(i.rjust(15) for i in ARGS.impls))
        for T in Ts:
            lines.append(f"{T:6d}" + "".join(f"{by[T, i][kind + '_ms']:15.3f}" for i in ARGS.impls))
        for base in ("gru_seq", "min_gru_seq"):
            if base not in ARGS.impls:
                continue
            others = [i for i in ARGS.impls if i != base]
            lines.append(f"{title}: speed-up vs {base} (>1 = faster than {base})")
            lines.append("T".rjust(6) + "".join(i.rjust(15) for i in others))
            for T in Ts:
                base_ms = by[T, base][kind + "_ms"]
                lines.append(f"{T:6d}" + "".join(f"{base_ms / by[T, i][kind + '_ms']:15.2f}"
                                                  for i in others))
    pairs = family_pairs(rows)
    if pairs:
        lines.append("\ntraining (forward + backward) tokens/s, fast form against sequential form")
        lines.append(f"{'family':>8s} {'T':>6s} {'fast':>14s} {'tokens/s':>10s} "
                     f"{'sequential':>14s} {'tokens/s':>10s} {'fast/seq':>9s}")
        for p in pairs:
            lines.append(f"{p['family']:>8s} {p['T']:6d} {p['fast']:>14s} "
                         f"{p['fast_tokens_per_s']:10,.0f} {p['seq']:>14s} "
                         f"{p['seq_tokens_per_s']:10,.0f} {p['ratio']:9.2f}")
    return "\n".join(lines)


def family_pairs(rows: list[dict]) -> list[dict]:
    """For each family with both forms measured, per T: training tokens/s of each form and
    their ratio ``fast / sequential`` (>1: the parallel or chunked form trains faster)."""
    by = {(r["T"], r["impl"]): r for r in rows}
    out = []
    for family, (fast, seq) in FAMILIES.items():
        for T in sorted({r["T"] for r in rows}):
            if (T, fast) in by and (T, seq) in by and by[T, seq]["bwd_ms"] is not None:
                f, q = by[T, fast]["bwd_tokens_per_s"], by[T, seq]["bwd_tokens_per_s"]
                out.append({"family": family, "T": T, "fast": fast, "seq": seq,
                            "fast_tokens_per_s": f, "seq_tokens_per_s": q, "ratio": f / q})
    return out


def main():
    devices = jax.devices()
    dtype = jnp.bfloat16 if ARGS.dtype == "bfloat16" else None
    log(f"jax {jax.__version__} devices: {devices}")
    log(f"B={ARGS.B} H={ARGS.H} E={ARGS.E} heads={ARGS.heads} chunk={ARGS.chunk} "
        f"dtype={ARGS.dtype} steps={ARGS.steps} kinds={ARGS.kinds} T={ARGS.T} malloc={MALLOC}")
    record = {
        "benchmark": "bench_scan",
        "devices": [str(d) for d in devices],
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "malloc": MALLOC,
        "args": {k: v for k, v in vars(ARGS).items()},
        "complete": False,
        "results": [],
    }
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    for i, T in enumerate(ARGS.T):
        record["results"].extend(bench_T(T, dtype))
        # Rewritten after every T, so a run stopped by a time limit keeps what it measured.
        record["complete"] = i == len(ARGS.T) - 1
        record["families"] = family_pairs(record["results"])
        with open(ARGS.out, "w") as f:
            json.dump(record, f, indent=1)
    log(ratio_table(record["results"]))
    log(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
