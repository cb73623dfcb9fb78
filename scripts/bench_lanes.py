#!/usr/bin/env python
"""The row-block ("lanes") rule of the fused LSTM/GRU loops, measured over a grid of shapes.

:func:`rnnjax.nn.fused.lanes_for` decides how many independent row blocks a fused loop
body cuts the batch into on a CPU (docs/performance.md §8). This script measures that
choice: for each cell, hidden size H and batch B it times one jitted training step
(``Recurrent(LSTMCell | GRUCell)``, loss ``mean(y**2)``, SGD, as scripts/bench_cells.py)
with ``lanes=1``, ``2`` and ``4``, in ONE process, alternating (1, 2, 4, 1, 2, 4, ...),
median of ``--rounds``, and prints each count's speed over one block, the count the rule
picks (``auto``) and the fastest. The forward and backward are the same numbers whatever
the count (the blocks are rows of one batch); only the speed differs.

Usage::

    python scripts/bench_lanes.py                  # lstm,gru x H 64..512 x B 16..128 (~8 min)
    python scripts/bench_lanes.py --cells gru --hidden 256 --batch 16,32 --rounds 30
    python scripts/bench_lanes.py --quick          # tiny smoke run

It tunes glibc malloc as bench_cells does (docs/performance.md §3; ``--malloc default``
leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

COUNTS = (1, 2, 4)
LR = 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cells", default="lstm,gru", help="comma list of lstm,gru")
    p.add_argument("--hidden", default="64,128,256,512", help="comma list of H")
    p.add_argument("--batch", default="16,32,64,128", help="comma list of B")
    p.add_argument("--T", type=int, default=64, help="sequence length")
    p.add_argument("--E", type=int, default=64, help="input features")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (one step of each count)")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc (default) or leave it alone")
    p.add_argument("--quick", action="store_true", help="H 8, B 8, T 8, 2 rounds: a smoke run")
    p.add_argument("--out", default="bench_results/bench_lanes.json", help="JSON result path")
    a = p.parse_args(argv)
    if a.quick:
        a.hidden, a.batch, a.T, a.E, a.rounds = "8", "8", 8, 4, 2
    try:
        a.cells = [c.strip() for c in a.cells.split(",") if c.strip()]
        a.hidden = [int(h) for h in a.hidden.split(",")]
        a.batch = [int(b) for b in a.batch.split(",")]
    except ValueError as e:
        p.error(f"--hidden and --batch take comma lists of integers ({e})")
    for c in a.cells:
        if c not in ("lstm", "gru"):
            p.error(f"unknown cell {c!r}; choose lstm or gru")
    return a


ARGS = parse_args()
from rnnjax._malloc import malloc_for  # noqa: E402

MALLOC = malloc_for(ARGS.malloc)  # before jax makes its first large buffers

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from rnnjax.nn import GRUCell, LSTMCell  # noqa: E402
from rnnjax.nn.fused import lanes_for  # noqa: E402
from rnnjax.nn.layers import Recurrent  # noqa: E402


def make_step(cell: str, B: int, H: int, lanes: int):
    """A synchronous callable: one donated training step with ``lanes`` row blocks."""
    Cell = LSTMCell if cell == "lstm" else GRUCell
    graphdef, params = nnx.split(Recurrent(Cell(ARGS.E, H, lanes=lanes, rngs=nnx.Rngs(0))))
    x = jax.random.normal(jax.random.key(1), (B, ARGS.T, ARGS.E))

    def train_step(p, x):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x) ** 2))(p)
        return jax.tree.map(lambda a, b: a - LR * b, p, g), loss

    step = jax.jit(train_step, donate_argnums=0)
    state = {"p": params}

    def run():
        state["p"], loss = step(state["p"], x)
        return float(loss)

    return run


def bench_shape(cell: str, B: int, H: int) -> dict:
    steps = {n: make_step(cell, B, H, n) for n in COUNTS}
    first_loss = {n: run() for n, run in steps.items()}  # compiles
    for run in steps.values():
        run()
    times = {n: [] for n in steps}
    for _ in range(ARGS.rounds):
        for n, run in steps.items():  # alternate 1, 2, 4, 1, 2, 4, ...
            t0 = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    G = 4 if cell == "lstm" else 3
    return {"cell": cell, "B": B, "H": H, "T": ARGS.T, "E": ARGS.E,
            "median_ms": {str(n): 1e3 * m for n, m in med.items()},
            "speedup_over_1": {str(n): med[1] / m for n, m in med.items()},
            "auto": lanes_for(B, H, G), "best": min(med, key=med.get),
            "first_loss": {str(n): v for n, v in first_loss.items()}}


def main():
    load0 = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.default_backend()}; malloc tuned: "
          f"{MALLOC['applied']}; T={ARGS.T}, E={ARGS.E}, {ARGS.rounds} rounds; load {load0}",
          flush=True)
    rows = []
    for cell in ARGS.cells:
        for H in ARGS.hidden:
            for B in ARGS.batch:
                r = bench_shape(cell, B, H)
                rows.append(r)
                ms, sp = r["median_ms"], r["speedup_over_1"]
                print(f"{cell:4} H={H:4d} B={B:4d}  ms: " + "  ".join(
                    f"{n}={ms[str(n)]:8.2f}" for n in COUNTS) + "  over 1: " + "  ".join(
                    f"{n}={sp[str(n)]:.2f}" for n in COUNTS[1:])
                    + f"  auto={r['auto']} best={r['best']}", flush=True)
    result = {"args": {k: v for k, v in vars(ARGS).items()}, "malloc": MALLOC,
              "jax": jax.__version__, "backend": jax.default_backend(),
              "loadavg_start": load0, "loadavg_end": os.getloadavg(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    sys.exit(main())
