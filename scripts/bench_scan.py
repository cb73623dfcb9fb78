#!/usr/bin/env python
"""Benchmark the parallel scans: minGRU (associative, log-space, sequential) and the LRU
(associative, sequential) vs the GRU.

What it measures, for each sequence length T, in ONE process with the
implementations run alternately (A, B, C, D, A, B, ...) so that machine noise
hits all alike:

* ``fwd``: one jitted forward pass ``y = layer(x)``, ``x`` ``(B, T, E)``;
* ``bwd``: one jitted ``jax.grad`` of ``sum(layer(x))`` with respect to the
  parameters (the forward pass included, as in training);
* the first call of each (trace + compile + one run), reported separately.

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
==================  ============================================================

The code is device-agnostic: the same command runs on CPU or GPU, and prints and
records ``jax.devices()``. On CPU, glibc malloc is tuned first
(``rnnjax._malloc.tune_malloc``, docs/performance.md §3) unless ``--malloc default``.

Usage::

    python scripts/bench_scan.py                          # T = 64 .. 4096, B=16 H=128 E=64
    python scripts/bench_scan.py --T 64,256,1024 --steps 5
    python scripts/bench_scan.py --quick                  # smoke run (seconds)
    python scripts/bench_scan.py --impls min_gru_assoc,gru_seq --dtype bfloat16

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

IMPLS = ("min_gru_assoc", "min_gru_log", "min_gru_seq", "gru_seq", "lru_assoc", "lru_seq")
DEFAULT_T = (64, 128, 256, 512, 1024, 2048, 4096)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", default=",".join(map(str, DEFAULT_T)),
                   help="comma list of sequence lengths")
    p.add_argument("--B", type=int, default=16, help="batch size")
    p.add_argument("--H", type=int, default=128, help="hidden features")
    p.add_argument("--E", type=int, default=64, help="input features")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {IMPLS}")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="computation dtype of the cells (parameters stay float32)")
    p.add_argument("--steps", type=int, default=20, help="timed calls per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--quick", action="store_true", help="T=64,128, B=4, H=32, E=16, 3 steps")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc (default; matters on CPU only) or leave it alone")
    p.add_argument("--out", default="bench_results/bench_scan.json", help="JSON result path")
    args = p.parse_args(argv)
    try:
        args.T = [int(t) for t in args.T.split(",") if t.strip()]
    except ValueError:
        p.error(f"--T must be a comma list of integers, got {args.T!r}")
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if args.quick:
        args.T, args.B, args.H, args.E, args.steps, args.warmup = [64, 128], 4, 32, 16, 3, 1
    bad = [i for i in args.impls if i not in IMPLS]
    if bad or not args.impls:
        p.error(f"unknown or empty --impls {bad}; known: {list(IMPLS)}")
    if not args.T or min(args.T) < 1:
        p.error(f"--T needs lengths >= 1, got {args.T}")
    if min(args.B, args.H, args.E, args.steps) < 1:
        p.error("--B, --H, --E and --steps must be >= 1")
    return args


ARGS = parse_args()

# The allocator must be tuned before jax makes its first large buffers.
if ARGS.malloc == "tuned":
    from rnnjax._malloc import tune_malloc

    MALLOC = tune_malloc()
else:
    MALLOC = {"applied": False, "settings": {}, "reason": "--malloc default"}

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from rnnjax.nn import GRUCell, LRUCell, MinGRUCell, Recurrent, ScanMode  # noqa: E402


def log(*a):
    print(*a, flush=True)


def build_layer(impl: str, dtype) -> Recurrent:
    rngs = nnx.Rngs(0)
    if impl == "gru_seq":
        cell = GRUCell(ARGS.E, ARGS.H, dtype=dtype, rngs=rngs)
    elif impl.startswith("lru_"):
        mode = {"lru_assoc": ScanMode.ASSOCIATIVE, "lru_seq": ScanMode.SEQUENTIAL}[impl]
        cell = LRUCell(ARGS.E, ARGS.H, scan_mode=mode, dtype=dtype, rngs=rngs)
    else:
        mode = {"min_gru_assoc": ScanMode.ASSOCIATIVE, "min_gru_log": ScanMode.LOG_SPACE,
                "min_gru_seq": ScanMode.SEQUENTIAL}[impl]
        cell = MinGRUCell(ARGS.E, ARGS.H, log_space=True, scan_mode=mode, dtype=dtype,
                          rngs=rngs)
    return Recurrent(cell)


class Bench:
    """The jitted forward and gradient of one implementation at one T."""

    def __init__(self, impl: str, x, dtype):
        self.impl = impl
        graphdef, params = nnx.split(build_layer(impl, dtype))
        self.params, self.x = params, x

        def apply(params, x):
            return nnx.merge(graphdef, params)(x)

        def loss(params, x):
            return jnp.sum(apply(params, x).astype(jnp.float32))

        self.fns = {"fwd": jax.jit(apply), "bwd": jax.jit(jax.grad(loss))}
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
    times = {(b.impl, k): [] for b in benches for k in ("fwd", "bwd")}
    for _ in range(ARGS.steps):  # interleaved: noise hits every implementation alike
        for b in benches:
            for k in ("fwd", "bwd"):
                times[b.impl, k].append(b._time(k))
    rows = []
    for b in benches:
        fwd, bwd = (statistics.median(times[b.impl, k]) for k in ("fwd", "bwd"))
        rows.append({
            "T": T, "impl": b.impl, "fwd_ms": 1e3 * fwd, "bwd_ms": 1e3 * bwd,
            "fwd_tokens_per_s": ARGS.B * T / fwd, "bwd_tokens_per_s": ARGS.B * T / bwd,
            "first_call_s": b.first_call_s, "steps": ARGS.steps,
        })
        log(f"  T={T:5d} {b.impl:14s} fwd {1e3 * fwd:9.3f} ms   fwd+bwd {1e3 * bwd:9.3f} ms   "
            f"(first calls {b.first_call_s['fwd']:.2f}s / {b.first_call_s['bwd']:.2f}s)")
    return rows


def ratio_table(rows: list[dict]) -> str:
    """Milliseconds per call, and speed-ups ``t(base) / t(impl)`` against two bases."""
    by = {(r["T"], r["impl"]): r for r in rows}
    Ts = sorted({r["T"] for r in rows})
    lines = []
    for kind in ("fwd", "bwd"):
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
    return "\n".join(lines)


def main():
    devices = jax.devices()
    dtype = jnp.bfloat16 if ARGS.dtype == "bfloat16" else None
    log(f"jax {jax.__version__} devices: {devices}")
    log(f"B={ARGS.B} H={ARGS.H} E={ARGS.E} dtype={ARGS.dtype} steps={ARGS.steps} "
        f"T={ARGS.T} malloc={MALLOC}")
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
        with open(ARGS.out, "w") as f:
            json.dump(record, f, indent=1)
    log(ratio_table(record["results"]))
    log(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
