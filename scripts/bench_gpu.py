#!/usr/bin/env python
"""Benchmark rnnjax's recurrent layers on a GPU against torch's cuDNN and flax linen, side by side.

What it measures, in ONE process, each figure the median of ``--repeats`` timed calls
after ``--warmup`` untimed ones (the first call, which compiles, is timed apart), each
call synchronised (``block_until_ready``; ``torch.cuda.synchronize``):

* ``fwd``: the forward pass ``y = layer(x)``;
* ``fwdbwd``: forward + backward, the gradient of ``sum(y)`` with respect to the
  parameters (JAX: one jitted ``jax.grad``; torch: ``autograd.grad``).

Cases (``--groups``, in this order, so that a time limit cuts the least important):

``cells``   LSTM: rnnjax ``impl`` = scan, fused, cudnn, pallas; flax linen
            ``nn.RNN(nn.OptimizedLSTMCell)``; torch ``nn.LSTM`` (cuDNN). GRU: rnnjax
            scan, fused, pallas; torch ``nn.GRU``. Shapes: FlashRNN's F = (B=16,
            T=1024, E=H=768), then bench_cells.py's S, M, L; float32, then bfloat16.
``heads``   F with 48 heads of 16: rnnjax's multi-head LSTM (``num_heads=48``, block-
            diagonal recurrence, every impl) and the sLSTM (``SLSTMCell``, 48 heads),
            against torch's dense ``nn.LSTM(768)`` (cuDNN has no heads).
``mingru``  minGRU's parallel (associative) scan against its sequential scan and the
            classic GRU (fused and scan) at T=4096.
``scans``   the linear scans alone (``cell.scan_projected`` on precomputed inputs,
            forward): minGRU, LRU, RG-LRU, associative and sequential, against the
            memory-bandwidth bound: the least traffic is reading the projected inputs
            once and writing the outputs once, so it prints the achieved GB/s of that
            traffic and its ratio to ``--peak-gbps`` (default 4800, an H200's HBM3e).

An implementation that cannot run here is skipped with its reason printed and
recorded (cuDNN and torch's CUDA need an NVIDIA GPU; ``impl="pallas"`` exists only
where ``rnnjax.nn.cell.IMPLS`` lists it, for H <= 64; cuDNN and the fused loops are float32;
a cell's ValueError is the reason). An implementation that fails otherwise is
recorded with its error, the others go on, and the script exits 1.

Ratios are speed-ups over torch's cuDNN (``x torch`` > 1: faster than torch) in the
same case, shape and dtype. Matmul precision is each framework's default (TF32 may
be used by both on Ampere and later; the JSON records the settings).

Usage::

    python scripts/bench_gpu.py --out bench_results/bench_gpu.json   # the whole run
    python scripts/bench_gpu.py --groups cells --shapes F --dtypes float32
    python scripts/bench_gpu.py --budget-s 300    # stop starting cases after 300 s
    python scripts/bench_gpu.py --quick           # tiny shapes, runs on a CPU in seconds

It writes ``--out`` after every case (``"complete": false`` until the last), so a run
stopped by a time limit keeps what it measured. It never changes library defaults.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bench_cells_shapes() -> dict[str, tuple[int, int, int, int]]:
    """bench_cells.py's ``SHAPES``, read from its source: importing it would run its
    argument parsing and allocator tuning at import."""
    tree = ast.parse((HERE / "bench_cells.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHAPES"
                                                for t in node.targets):
            return {k: tuple(v) for k, v in ast.literal_eval(node.value).items()}
    raise RuntimeError("scripts/bench_cells.py no longer defines SHAPES")


#: name -> (B, T, E, H). F is FlashRNN's benchmark shape (Pöppel et al. 2024).
SHAPES = {"F": (16, 1024, 768, 768), **_bench_cells_shapes()}
QUICK_SHAPES = {"Q": (2, 8, 4, 8)}
HEADS, QUICK_HEADS = 48, 2
MINGRU_SHAPE, QUICK_MINGRU_SHAPE = (16, 4096, 256, 256), (2, 32, 4, 8)
SCAN_SHAPE, QUICK_SCAN_SHAPE = (16, 4096, 768, 768), (2, 32, 4, 8)
GROUPS = ("cells", "heads", "mingru", "scans")
LSTM_IMPLS = ("scan", "fused", "cudnn", "pallas")
GRU_IMPLS = ("scan", "fused", "pallas")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {GROUPS}")
    p.add_argument("--shapes", default="F,S,M,L", help=f"comma list of {list(SHAPES)} (cells)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32,bfloat16")
    p.add_argument("--kinds", default="fwd,fwdbwd",
                   help="comma list of what to time: fwd, fwdbwd (the scans: fwd always)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--peak-gbps", type=float, default=4800.0,
                   help="memory bandwidth the scans are compared with, GB/s (H200: 4800)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new case after this many seconds (the JSON says which "
                        "were left out)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny shapes, float32, fwdbwd only, 1 timed call; on a "
                        "CPU, compiling one program per implementation is most of its time")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc (matters on CPU only) or leave it alone")
    p.add_argument("--out", default="bench_results/bench_gpu.json", help="JSON result path")
    args = p.parse_args(argv)
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    args.groups, args.shapes, args.dtypes = split(args.groups), split(args.shapes), \
        split(args.dtypes)
    args.kinds = [k for k in ("fwd", "fwdbwd") if k in split(args.kinds)]
    if args.quick:
        args.shapes, args.dtypes, args.kinds = ["Q"], ["float32"], ["fwdbwd"]
        args.repeats, args.warmup = 1, 0
    known = {**SHAPES, **QUICK_SHAPES}
    for what, vals, ok in (("groups", args.groups, GROUPS), ("shapes", args.shapes, known),
                           ("dtypes", args.dtypes, ("float32", "bfloat16"))):
        bad = [v for v in vals if v not in ok]
        if bad or not vals:
            p.error(f"unknown or empty --{what} {bad}; known: {list(ok)}")
    if not args.kinds:
        p.error("--kinds must name fwd, fwdbwd or both")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


ARGS = parse_args()

from rnnjax._malloc import malloc_for  # noqa: E402

MALLOC = malloc_for(ARGS.malloc)  # before jax/torch make their first large buffers
# JAX would take 75% of the GPU's memory at start; torch shares the device here.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if ARGS.quick:
    # A smoke run's time is compiling (its timings mean nothing): XLA's backend
    # optimisation level 0 compiles the tiny programs several times faster on a CPU.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen, nnx  # noqa: E402

from rnnjax.nn import Recurrent, make_cell  # noqa: E402
from rnnjax.nn import cell as cell_protocol  # noqa: E402

# torch is the baseline only on a GPU (its cuDNN); elsewhere it is not even imported.
torch, TORCH_SKIP = None, None
if jax.default_backend() == "gpu":
    try:
        import torch
    except ImportError:
        TORCH_SKIP = "torch is not installed (on the GPU machine: a CUDA build of torch)"
else:
    TORCH_SKIP = (f"the baseline is torch's cuDNN on the GPU, and JAX runs on "
                  f"{jax.default_backend()}")


def log(*a):
    print(*a, flush=True)


def torch_problem() -> str | None:
    """Why torch's cuDNN cannot be the baseline here (None: it can)."""
    if TORCH_SKIP:
        return TORCH_SKIP
    if not torch.cuda.is_available():
        return "torch has no CUDA here (a CPU build?); a CPU torch is no cuDNN baseline"
    return None


# ---------------------------------------------------------------------------
# Implementations: each has fwd() and fwdbwd(), both synchronous.
# ---------------------------------------------------------------------------
class Unavailable(Exception):
    """An implementation that cannot run here; the message is the reason."""


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class JaxBench:
    def __init__(self, apply, params, x):
        def loss(params, x):
            return jnp.sum(apply(params, x).astype(jnp.float32))

        f, g = jax.jit(apply), jax.jit(jax.grad(loss))
        self.fwd = lambda: jax.block_until_ready(f(params, x))
        self.fwdbwd = lambda: jax.block_until_ready(g(params, x))


def rnnjax_bench(cell_name, x, E, H, dtype, **cell_kw):
    impl = cell_kw.get("impl")
    if impl is not None and impl not in cell_protocol.IMPLS:
        raise Unavailable(f"impl={impl!r} is not in this checkout's rnnjax.nn.cell.IMPLS "
                          f"{list(cell_protocol.IMPLS)}")
    try:
        cell = make_cell(cell_name, E, H, rngs=nnx.Rngs(0), dtype=dtype, **cell_kw)
    except ValueError as e:
        raise Unavailable(str(e)) from None
    graphdef, params = nnx.split(Recurrent(cell))
    return JaxBench(lambda p, x: nnx.merge(graphdef, p)(x), params, x)


def linen_bench(x, H, dtype):
    model = linen.RNN(linen.OptimizedLSTMCell(H, dtype=dtype, param_dtype=jnp.float32))
    params = model.init(jax.random.key(0), x)
    return JaxBench(model.apply, params, x)


class TorchBench:
    def __init__(self, kind, x_np, E, H, dtype):
        why = torch_problem()
        if why:
            raise Unavailable(why)
        torch.manual_seed(0)
        tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        Mod = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        mod = Mod(E, H, batch_first=True).to("cuda", tdt)
        params = list(mod.parameters())
        x = torch.from_numpy(x_np).to("cuda", tdt)

        def fwd():
            with torch.no_grad():
                mod(x)
            torch.cuda.synchronize()

        def fwdbwd():
            y, _ = mod(x)
            torch.autograd.grad(y.float().sum(), params)
            torch.cuda.synchronize()

        self.fwd, self.fwdbwd = fwd, fwdbwd


def measure(name, build, tokens, kinds=None):
    """Builds and times one implementation (``kinds``: default ``--kinds``); returns its
    result row, with ``null`` for a kind not timed (never raises)."""
    kinds = ARGS.kinds if kinds is None else kinds
    row = {"impl": name, **{f"{k}_{f}": None for k in ("fwd", "fwdbwd")
                            for f in ("ms", "tokens_per_s")}}
    try:
        t0 = time.perf_counter()
        bench = build()
        row["first_call_s"] = {k: _timed(getattr(bench, k)) for k in kinds}
        row["build_s"] = time.perf_counter() - t0
        for _ in range(ARGS.warmup):
            for kind in kinds:
                getattr(bench, kind)()
        for kind in kinds:
            times = [_timed(getattr(bench, kind)) for _ in range(ARGS.repeats)]
            med = statistics.median(times)
            row[f"{kind}_ms"] = 1e3 * med
            row[f"{kind}_tokens_per_s"] = tokens / med
            row[f"{kind}_times_s"] = times
        row["status"] = "ok"
    except Unavailable as e:
        row.update(status="skipped", reason=str(e))
        log(f"    {name}: skipped: {e}")
    except Exception as e:  # recorded, the others go on; the script exits 1
        row.update(status="error", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
        log(f"    {name}: ERROR {type(e).__name__}: {e}")
    return row


def _x(B, T, E, dtype):
    x_np = np.random.default_rng(0).standard_normal((B, T, E)).astype(np.float32)
    return x_np, jnp.asarray(x_np, dtype)


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
def case_cells(shape, dtype_name):
    B, T, E, H = {**SHAPES, **QUICK_SHAPES}[shape]
    dtype = jnp.dtype(dtype_name)
    x_np, x = _x(B, T, E, dtype)
    rows = []
    for kind, impls in (("lstm", LSTM_IMPLS), ("gru", GRU_IMPLS)):
        rows.append({"cell": kind, **measure("torch_cudnn", lambda k=kind: TorchBench(
            k, x_np, E, H, dtype_name), B * T)})
        for impl in impls:
            rows.append({"cell": kind, **measure(f"rnnjax_{impl}", lambda k=kind, i=impl:
                                                 rnnjax_bench(k, x, E, H, dtype, impl=i), B * T)})
        if kind == "lstm":
            rows.append({"cell": kind, **measure("linen", lambda: linen_bench(x, H, dtype),
                                                 B * T)})
    return {"group": "cells", "shape": shape, "B": B, "T": T, "E": E, "H": H,
            "dtype": dtype_name, "rows": rows}


def case_heads(dtype_name):
    shape = "Q" if ARGS.quick else "F"
    B, T, E, H = {**SHAPES, **QUICK_SHAPES}[shape]
    N = QUICK_HEADS if ARGS.quick else HEADS
    dtype = jnp.dtype(dtype_name)
    x_np, x = _x(B, T, E, dtype)
    rows = [{"cell": "lstm", **measure("torch_cudnn_dense", lambda: TorchBench(
        "lstm", x_np, E, H, dtype_name), B * T)}]
    for impl in LSTM_IMPLS:
        rows.append({"cell": f"lstm_{N}heads", **measure(f"rnnjax_{impl}", lambda i=impl:
                     rnnjax_bench("lstm", x, E, H, dtype, impl=i, num_heads=N), B * T)})
    rows.append({"cell": f"slstm_{N}heads", **measure("rnnjax_slstm", lambda:
                 rnnjax_bench("slstm", x, E, H, dtype, num_heads=N), B * T)})
    return {"group": "heads", "shape": shape, "heads": N, "B": B, "T": T, "E": E, "H": H,
            "dtype": dtype_name, "rows": rows}


def case_mingru(dtype_name):
    B, T, E, H = QUICK_MINGRU_SHAPE if ARGS.quick else MINGRU_SHAPE
    dtype = jnp.dtype(dtype_name)
    x_np, x = _x(B, T, E, dtype)
    rows = [{"cell": "gru", **measure("torch_cudnn", lambda: TorchBench(
        "gru", x_np, E, H, dtype_name), B * T)}]
    for name, mode in (("min_gru_assoc", "associative"), ("min_gru_seq", "sequential")):
        rows.append({"cell": "min_gru", **measure(name, lambda m=mode: rnnjax_bench(
            "min_gru", x, E, H, dtype, log_space=True, scan_mode=m), B * T)})
    for impl in ("fused", "scan"):
        rows.append({"cell": "gru", **measure(f"gru_{impl}", lambda i=impl: rnnjax_bench(
            "gru", x, E, H, dtype, impl=i), B * T)})
    return {"group": "mingru", "B": B, "T": T, "E": E, "H": H, "dtype": dtype_name,
            "rows": rows}


class ScanBench:
    """``cell.scan_projected`` alone, forward, on precomputed projected inputs."""

    def __init__(self, cell_name, x, E, H, dtype, **kw):
        try:
            cell = make_cell(cell_name, E, H, rngs=nnx.Rngs(0), dtype=dtype, **kw)
        except ValueError as e:
            raise Unavailable(str(e)) from None
        xp = jax.jit(cell.project_inputs)(jnp.swapaxes(x, 0, 1))  # (T, B, P)
        carry = cell.initialize_carry(x.shape[0])
        graphdef, state = nnx.split(cell)

        def run(state, carry, xp):
            return nnx.merge(graphdef, state).scan_projected(carry, xp)[1]

        f = jax.jit(run)
        ys = jax.eval_shape(f, state, carry, xp)
        self.bytes = xp.size * xp.dtype.itemsize + ys.size * jnp.dtype(ys.dtype).itemsize
        self.fwd = lambda: jax.block_until_ready(f(state, carry, xp))


def case_scans(dtype_name):
    B, T, E, H = QUICK_SCAN_SHAPE if ARGS.quick else SCAN_SHAPE
    dtype = jnp.dtype(dtype_name)
    _, x = _x(B, T, E, dtype)
    rows = []
    for cell_name, kw in (("min_gru", {"log_space": True}), ("lru", {}), ("rglru", {})):
        for mode in ("associative", "sequential"):
            holder = {}

            def build(c=cell_name, kw=kw, m=mode, holder=holder):
                holder["b"] = ScanBench(c, x, E, H, dtype, scan_mode=m, **kw)
                return holder["b"]

            row = {"cell": cell_name, **measure(f"{cell_name}_{mode}", build, B * T,
                                                kinds=("fwd",))}
            if row["status"] == "ok":
                gbps = holder["b"].bytes / (row["fwd_ms"] / 1e3) / 1e9
                row.update(bytes=holder["b"].bytes, gb_per_s=gbps,
                           fraction_of_peak=gbps / ARGS.peak_gbps)
            rows.append(row)
    return {"group": "scans", "B": B, "T": T, "E": E, "H": H, "dtype": dtype_name,
            "peak_gbps": ARGS.peak_gbps, "rows": rows}


def add_ratios(case):
    base = next((r for r in case["rows"] if r["impl"].startswith("torch_cudnn")
                 and r["status"] == "ok"), None)
    for r in case["rows"]:
        for k in ("fwd", "fwdbwd"):
            if base is not None and r.get(f"{k}_ms"):
                r[f"{k}_x_torch"] = base[f"{k}_ms"] / r[f"{k}_ms"]
    return case


def plan():
    """``[(label, thunk)]`` in priority order (see the module docstring)."""
    out = []
    first = ARGS.dtypes[0]
    if "cells" in ARGS.groups:
        out.append((f"cells {ARGS.shapes[0]} {first}", lambda: case_cells(ARGS.shapes[0], first)))
    if "scans" in ARGS.groups:
        out.append((f"scans {first}", lambda: case_scans(first)))
    if "mingru" in ARGS.groups:
        out.append((f"mingru {first}", lambda: case_mingru(first)))
    if "heads" in ARGS.groups:
        out += [(f"heads {d}", lambda d=d: case_heads(d)) for d in ARGS.dtypes]
    if "cells" in ARGS.groups:
        out += [(f"cells {s} {d}", lambda s=s, d=d: case_cells(s, d))
                for d in ARGS.dtypes for s in ARGS.shapes if (s, d) != (ARGS.shapes[0], first)]
    if "scans" in ARGS.groups:
        out += [(f"scans {d}", lambda d=d: case_scans(d)) for d in ARGS.dtypes[1:]]
    if "mingru" in ARGS.groups:
        out += [(f"mingru {d}", lambda d=d: case_mingru(d)) for d in ARGS.dtypes[1:]]
    return out


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(cases) -> str:
    lines = ["| case | B,T,E,H | dtype | cell | impl | fwd ms | fwd tok/s | fwd+bwd ms | "
             "fwd+bwd tok/s | x torch fwd | x torch fwd+bwd | GB/s (of peak) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        label = c["group"] + (f" {c['shape']}" if "shape" in c else "")
        dims = f"{c['B']},{c['T']},{c['E']},{c['H']}"
        for r in c["rows"]:
            note = r.get("reason") or r.get("error") or ""
            gb = (f"{r['gb_per_s']:.1f} ({r['fraction_of_peak']:.1%})" if "gb_per_s" in r
                  else "-")
            lines.append(
                f"| {label} | {dims} | {c['dtype']} | {r['cell']} | {r['impl']} | "
                f"{_f(r.get('fwd_ms'), '.3f')} | {_f(r.get('fwd_tokens_per_s'), ',.0f')} | "
                f"{_f(r.get('fwdbwd_ms'), '.3f')} | {_f(r.get('fwdbwd_tokens_per_s'), ',.0f')} | "
                f"{_f(r.get('fwd_x_torch'), '.2f')} | {_f(r.get('fwdbwd_x_torch'), '.2f')} | "
                f"{gb} | {note[:120]} |")
    return "\n".join(lines)


def main():
    t_start = time.perf_counter()
    record = {
        "benchmark": "bench_gpu", "complete": False,
        "args": {k: v for k, v in vars(ARGS).items()},
        "env": {"python": sys.version.split()[0], "platform": platform.platform(),
                "jax": jax.__version__, "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()],
                "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
                "torch": None if torch is None else torch.__version__,
                "torch_cuda": None if torch is None else torch.cuda.is_available(),
                "torch_cudnn_allow_tf32": (None if torch is None
                                           else torch.backends.cudnn.allow_tf32),
                "rnnjax_impls": list(cell_protocol.IMPLS), "malloc": MALLOC},
        "cases": [], "left_out_for_budget": [],
    }
    log(f"jax {jax.__version__} on {record['env']['devices']}; torch "
        f"{record['env']['torch']} (baseline: {torch_problem() or 'torch cuDNN on the GPU'})")
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    todo = plan()
    for i, (label, run) in enumerate(todo):
        if ARGS.budget_s is not None and time.perf_counter() - t_start > ARGS.budget_s:
            record["left_out_for_budget"] = [lbl for lbl, _ in todo[i:]]
            log(f"budget of {ARGS.budget_s:.0f} s spent: left out {record['left_out_for_budget']}")
            break
        log(f"== {label}")
        t0 = time.perf_counter()
        case = add_ratios(run())
        case["wall_s"] = time.perf_counter() - t0
        record["cases"].append(case)
        log(table([case]).split("\n", 2)[2])
        record["complete"] = i == len(todo) - 1
        with open(ARGS.out, "w") as f:
            json.dump(record, f, indent=1)
    record["wall_s"] = time.perf_counter() - t_start
    with open(ARGS.out, "w") as f:
        json.dump(record, f, indent=1)
    log("\n" + table(record["cases"]))
    log(f"wrote {ARGS.out} ({record['wall_s']:.0f} s)")
    errors = [(c["group"], r["impl"]) for c in record["cases"] for r in c["rows"]
              if r["status"] == "error"]
    if errors:
        log(f"FAILED implementations: {errors}")
        sys.exit(1)


if __name__ == "__main__":
    main()
