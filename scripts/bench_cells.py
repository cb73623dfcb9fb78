#!/usr/bin/env python
"""Benchmark LSTM and GRU training and inference: rnnjax vs torch vs flax linen.

What it measures, per shape and cell, in ONE process with the implementations
run alternately (A, B, C, A, B, C, ...) so that machine noise hits all alike:

* ``train``: tokens/s of one jitted training step (forward, backward and an SGD
  update, ``loss = mean(y ** 2)``), median over ``--steps`` steps after warm-up;
* ``infer``: tokens/s of the forward pass only;
* the first call of every JAX step (trace + compile + one run) separately;
* compile time against sequence length (T=64 vs T=1024): it must not grow with T,
  since ``lax.scan`` is not unrolled.

Implementations:

* ``rnnjax``: ``Recurrent(LSTMCell | GRUCell)``, split once with ``nnx.split``, then
  ``jax.jit`` of a pure step over the state with ``donate_argnums``. On float32
  the cells dispatch to the fused custom-VJP loops of :mod:`rnnjax.nn.fused`.
* ``rnnjax_plain`` (opt-in): the same cells built with ``impl="scan"`` (plain
  ``lax.scan`` autodiff), to show what the fused loops buy.
* ``torch``: ``nn.LSTM`` / ``nn.GRU`` (batch_first), ``torch.set_num_threads(2)``
  on CPU (``--torch-threads``), the same loss and SGD update. Skipped with a
  message when torch is missing, or when JAX runs on a GPU and torch has no CUDA.
* ``torch_ops`` (opt-in): the same torch module with oneDNN switched off for its calls
  (``torch.backends.mkldnn.enabled = False`` around its calls). On a CPU, torch runs ``nn.LSTM``
  (not ``nn.GRU``) through oneDNN's fused RNN primitive (``aten::mkldnn_rnn_layer``, one
  JIT-compiled kernel per layer and direction); with it off, torch runs the LSTM op by op,
  as it always runs the GRU (docs/performance.md §19). CPU only.
* ``linen``: ``flax.linen.RNN(OptimizedLSTMCell(H))`` / ``RNN(GRUCell(H))``.

Allocator: by default glibc malloc is tuned (``rnnjax._malloc.tune_malloc``,
docs/performance.md §3) before jax or torch is imported, so BOTH sides run under the
same allocator settings; ``--malloc default`` leaves glibc alone. The JSON
records which.

Usage::

    python scripts/bench_cells.py                       # S,M,L x lstm,gru (~10 min on 2 cores)
    python scripts/bench_cells.py --shapes S --cells lstm --steps 20
    python scripts/bench_cells.py --quick               # tiny smoke run (~1 min)
    python scripts/bench_cells.py --impls rnnjax,rnnjax_plain,torch,linen
    python scripts/bench_cells.py --impls rnnjax,torch,torch_ops --modes train

It never changes library defaults: anything it switches (the allocator) it switches
in its own process only; ``rnnjax_plain`` is a cell argument (``impl="scan"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

SHAPES = {  # name: (B, T, E, H)
    "S": (32, 64, 64, 128),
    "M": (64, 128, 128, 256),
    "L": (16, 1024, 32, 64),
}
QUICK_SHAPES = {"Q": (4, 16, 8, 16)}
IMPLS = ("rnnjax", "rnnjax_plain", "torch", "torch_ops", "linen")
LR = 1e-3  # small, so many steps on one batch stay finite


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="S,M,L", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--cells", default="lstm,gru", help="comma list of lstm,gru")
    p.add_argument("--impls", default="rnnjax,torch,linen", help=f"comma list of {IMPLS}")
    p.add_argument("--modes", default="train,infer", help="comma list of train,infer")
    p.add_argument("--steps", type=int, default=20, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first call")
    p.add_argument("--quick", action="store_true",
                   help="tiny shape, 3 steps, small compile check: a smoke run")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc for both sides (default) or leave it alone")
    p.add_argument("--torch-threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-compile-check", action="store_true",
                   help="skip the compile-time vs T check")
    p.add_argument("--out", default="bench_results/bench_cells.json", help="JSON result path")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.quick:
        args.shapes, args.steps, args.warmup = ["Q"], 3, 1
    known = {**SHAPES, **QUICK_SHAPES}
    for what, vals, ok in (("shape", args.shapes, known), ("cell", args.cells, ("lstm", "gru")),
                           ("impl", args.impls, IMPLS), ("mode", args.modes, ("train", "infer"))):
        bad = [v for v in vals if v not in ok]
        if bad or not vals:
            p.error(f"unknown or empty --{what}s {bad}; known: {sorted(ok)}")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


ARGS = parse_args()

# The allocator must be tuned before jax/torch make their first large buffers.
from rnnjax._malloc import malloc_for  # noqa: E402

MALLOC = malloc_for(ARGS.malloc)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen, nnx  # noqa: E402

from rnnjax.nn import GRUCell, LSTMCell  # noqa: E402
from rnnjax.nn.layers import Recurrent  # noqa: E402

try:
    import torch
except ImportError:  # the benchmark still runs JAX-only
    torch = None


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# Implementations. Each has .name, .first_call_s and .step() (synchronous).
# ---------------------------------------------------------------------------
def _sgd(params, grads):
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)


class JaxImpl:
    """A jitted pure step ``state -> state`` (train) or ``params, x -> y`` (infer)."""

    def __init__(self, name, apply, params, x, mode):
        self.name, self.mode, self.x = name, mode, x
        if mode == "train":
            def train_step(params, x):
                loss, grads = jax.value_and_grad(lambda p: jnp.mean(apply(p, x) ** 2))(params)
                return _sgd(params, grads), loss

            self.fn = jax.jit(train_step, donate_argnums=0)
        else:
            self.fn = jax.jit(apply)
        self.params = params
        t0 = time.perf_counter()  # the first call traces and compiles
        self.step()
        self.first_call_s = time.perf_counter() - t0

    def step(self):
        if self.mode == "train":
            self.params, loss = self.fn(self.params, self.x)
            loss.block_until_ready()
        else:
            self.fn(self.params, self.x).block_until_ready()


def make_rnnjax(cell, B, T, E, H, x, mode, variant="rnnjax"):
    Cell = LSTMCell if cell == "lstm" else GRUCell
    impl = "scan" if variant == "rnnjax_plain" else "auto"
    model = Recurrent(Cell(E, H, impl=impl, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    return JaxImpl(variant, apply, state, x, mode)


def make_linen(cell, B, T, E, H, x, mode):
    lcell = linen.OptimizedLSTMCell(H) if cell == "lstm" else linen.GRUCell(H)
    model = linen.RNN(lcell)
    params = model.init(jax.random.key(0), x)
    return JaxImpl("linen", model.apply, params, x, mode)


class TorchImpl:
    def __init__(self, cell, B, T, E, H, x_np, mode, device, name="torch"):
        self.name = name
        # torch_ops: oneDNN off around this side's calls only (step() sets and restores it).
        self.onednn = name != "torch_ops"
        torch.manual_seed(0)
        Mod = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.mod = Mod(E, H, batch_first=True).to(device)
        self.params = list(self.mod.parameters())
        self.x = torch.from_numpy(x_np).to(device)
        self.mode, self.device = mode, device
        t0 = time.perf_counter()
        self.step()
        self.first_call_s = time.perf_counter() - t0

    def _sync(self):
        if self.device != "cpu":
            torch.cuda.synchronize()

    def step(self):
        # The switch is a global of torch's, so set around this side's calls only (not
        # torch.backends.mkldnn.flags, which also sets TF32 and warns on a CPU build).
        mkldnn = torch.backends.mkldnn
        before, mkldnn.enabled = mkldnn.enabled, self.onednn
        try:
            self._step()
        finally:
            mkldnn.enabled = before
        self._sync()

    def _step(self):
        if self.mode == "train":
            y, _ = self.mod(self.x)
            loss = (y * y).mean()
            grads = torch.autograd.grad(loss, self.params)
            with torch.no_grad():
                torch._foreach_add_(self.params, grads, alpha=-LR)
            loss.item()
        else:
            with torch.inference_mode():
                self.mod(self.x)


def torch_device():
    """'cpu', 'cuda', or None (skip) with the reason printed."""
    if not {"torch", "torch_ops"} & set(ARGS.impls):
        return None
    if torch is None:
        log("torch is not installed: skipping the torch comparison")
        return None
    if jax.default_backend() == "cpu":
        torch.set_num_threads(ARGS.torch_threads)
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    log(f"JAX runs on {jax.default_backend()} but torch has no CUDA: skipping torch "
        f"(a CPU torch would not be a fair comparison)")
    return None


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------
def bench_case(shape_name, cell, mode, tdev):
    B, T, E, H = {**SHAPES, **QUICK_SHAPES}[shape_name]
    x_np = np.random.default_rng(0).standard_normal((B, T, E)).astype(np.float32)
    x = jnp.asarray(x_np)
    impls = []
    for name in ARGS.impls:
        if name in ("torch", "torch_ops"):
            if tdev is None or (name == "torch_ops" and tdev != "cpu"):
                continue
            impls.append(TorchImpl(cell, B, T, E, H, x_np, mode, tdev, name))
        elif name == "linen":
            impls.append(make_linen(cell, B, T, E, H, x, mode))
        else:
            impls.append(make_rnnjax(cell, B, T, E, H, x, mode, variant=name))
    for _ in range(ARGS.warmup):
        for im in impls:
            im.step()
    times = {im.name: [] for im in impls}
    for _ in range(ARGS.steps):
        for im in impls:  # alternate A, B, C, A, B, C, ...
            t0 = time.perf_counter()
            im.step()
            times[im.name].append(time.perf_counter() - t0)
    res = {}
    for im in impls:
        ts = sorted(times[im.name])
        med = statistics.median(ts)
        res[im.name] = {
            "median_s": med,
            "tokens_per_s": B * T / med,
            "min_s": ts[0],
            "tokens_per_s_at_min": B * T / ts[0],
            "p25_s": ts[len(ts) // 4],
            "p75_s": ts[(3 * len(ts)) // 4],
            "first_call_s": im.first_call_s,
            "times_s": times[im.name],
        }
    for base in ("torch", "torch_ops", "linen"):
        if base in res:
            for r in res.values():
                r[f"ratio_to_{base}"] = r["tokens_per_s"] / res[base]["tokens_per_s"]
                r[f"ratio_to_{base}_at_min"] = res[base]["min_s"] / r["min_s"]
    return {"shape": shape_name, "B": B, "T": T, "E": E, "H": H, "cell": cell, "mode": mode,
            "results": res}


def compile_vs_T(cell, Ts, B, E, H):
    """AOT trace+lower and compile seconds of the rnnjax and linen train steps per T."""
    out = {}
    for impl in ("rnnjax", "linen"):
        if impl not in ARGS.impls:
            continue
        out[impl] = {}
        for T in Ts:
            x = jnp.zeros((B, T, E), jnp.float32)
            if impl == "rnnjax":
                Cell = LSTMCell if cell == "lstm" else GRUCell
                graphdef, params = nnx.split(Recurrent(Cell(E, H, rngs=nnx.Rngs(0))))

                def apply(p, x, graphdef=graphdef):
                    return nnx.merge(graphdef, p)(x)
            else:
                model = linen.RNN(linen.OptimizedLSTMCell(H) if cell == "lstm"
                                  else linen.GRUCell(H))
                params = model.init(jax.random.key(0), x)
                apply = model.apply

            def train_step(p, x, apply=apply):
                loss, g = jax.value_and_grad(lambda p: jnp.mean(apply(p, x) ** 2))(p)
                return _sgd(p, g), loss

            t0 = time.perf_counter()
            lowered = jax.jit(train_step, donate_argnums=0).lower(params, x)
            t1 = time.perf_counter()
            lowered.compile()
            t2 = time.perf_counter()
            out[impl][str(T)] = {"trace_lower_s": t1 - t0, "compile_s": t2 - t1}
        first, last = str(Ts[0]), str(Ts[-1])
        out[impl]["compile_ratio_last_to_first"] = (
            out[impl][last]["compile_s"] / out[impl][first]["compile_s"])
    return out


def fmt_table(cases):
    """Medians first; the ratios at the fastest step ('@min') show what noise hides."""
    lines = []
    hdr = (f"{'shape':5} {'cell':4} {'mode':5} {'impl':14} {'tok/s':>11} {'ms/step':>9} "
           f"{'x torch':>7} {'x t_ops':>7} {'x linen':>7} {'@min':>5} {'@min':>5} "
           f"{'1st call s':>10}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    nan = float("nan")
    for c in cases:
        for name, r in c["results"].items():
            lines.append(
                f"{c['shape']:5} {c['cell']:4} {c['mode']:5} {name:14} {r['tokens_per_s']:11,.0f} "
                f"{1e3 * r['median_s']:9.2f} {r.get('ratio_to_torch', nan):7.2f} "
                f"{r.get('ratio_to_torch_ops', nan):7.2f} {r.get('ratio_to_linen', nan):7.2f} "
                f"{r.get('ratio_to_torch_at_min', nan):5.2f} "
                f"{r.get('ratio_to_linen_at_min', nan):5.2f} {r['first_call_s']:10.2f}")
    return "\n".join(lines)


def main():
    tdev = torch_device()
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
        "torch": None if torch is None else torch.__version__, "torch_device": tdev,
        "torch_threads": (torch.get_num_threads() if tdev == "cpu" else None),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": MALLOC,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    log(f"jax {env['jax']} on {env['jax_backend']}; torch {env['torch']} on {tdev} "
        f"(threads {env['torch_threads']}); malloc tuned: {MALLOC['applied']}; "
        f"XLA_FLAGS={env['xla_flags']!r}")
    cases = []
    for shape in ARGS.shapes:
        for cell in ARGS.cells:
            for mode in ARGS.modes:
                t0 = time.perf_counter()
                case = bench_case(shape, cell, mode, tdev)
                cases.append(case)
                log(fmt_table([case]).split("\n", 2)[2] + f"   [{time.perf_counter() - t0:.0f}s]")
    compile_check = {}
    if not ARGS.no_compile_check:
        Ts, (B, E, H) = ((8, 64), (4, 8, 16)) if ARGS.quick else ((64, 1024), (16, 32, 64))
        for cell in ARGS.cells:
            compile_check[cell] = compile_vs_T(cell, Ts, B, E, H)
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    log("\n" + fmt_table(cases))
    for cell, cc in compile_check.items():
        for impl, d in cc.items():
            per_T = ", ".join(f"T={T}: trace+lower {v['trace_lower_s']:.2f}s compile "
                              f"{v['compile_s']:.2f}s" for T, v in d.items() if T.isdigit())
            log(f"compile vs T  {cell:4} {impl:7} {per_T}  "
                f"(ratio {d['compile_ratio_last_to_first']:.2f})")
    result = {"args": {k: v for k, v in vars(ARGS).items()}, "env": env, "cases": cases,
              "compile_vs_T": compile_check}
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
