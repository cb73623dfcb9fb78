#!/usr/bin/env python
"""Where the time of one LSTM/GRU training step goes, beside torch's, at bench_cells' shapes.

``scripts/bench_cells.py`` gives the ratio of one training step (forward, backward, SGD)
to torch's ``nn.LSTM`` / ``nn.GRU``; this script splits that step into parts, each a
jitted program timed on its own, all run alternately in ONE process (part A, part B,
..., A, B, ...), median of ``--rounds`` rounds:

rnnjax (``Recurrent(LSTMCell | GRUCell)``, ``impl="auto"``, the fused loop on a CPU):

* ``train_step``: bench_cells' step (loss ``mean(y**2)``, gradients, SGD), donated;
* ``forward``: the layer's forward alone;
* ``projection_fwd_bwd``: the input projection ``x W_ih + b`` (:func:`rnnjax.nn.fused.project`)
  on time-major ``x``, forward and backward;
* ``loop_fwd``: the fused time loop (``lstm_scan`` / ``gru_scan``) forward, on projected inputs;
* ``loop_fwd_bwd``: the same, forward and backward (``dxp``, ``dh0``, ``dW_hh``);
* ``dW_hh_outer_sum``: the one ``(H, T*B) x (T*B, G*H)`` matmul that the backward makes
  after its reverse loop (:func:`rnnjax.nn.fused._outer_sum`);
* ``matmul_floor_fwd`` / ``matmul_floor_bwd``: a ``lax.scan`` of T dependent recurrent
  matmuls and nothing else, ``(B, H) x (H, G*H)`` and ``(B, G*H) x (G*H, H)``: what the
  forward and backward loops would cost if their gates were free;

torch (``torch.set_num_threads(2)``):

* ``torch_train_step``: bench_cells' torch step; ``torch_forward``;
* ``torch_matmul_floor_fwd``: T dependent ``torch.mm`` of the same shape as the forward's.

From these it prints the shares of the step: the recurrent matmuls (both floors), the
rest of the loops (gates, masks, stores: loop minus its floor and the outer sum), the
outer sum, the projection, and what is left (the loss, SGD, the layer's transposes).

Usage::

    python scripts/bench_breakdown.py                     # M, lstm and gru (~2 min)
    python scripts/bench_breakdown.py --shapes S,M --cells lstm --rounds 30
    python scripts/bench_breakdown.py --quick             # tiny smoke run

It tunes glibc malloc for both sides as bench_cells does (docs/performance.md §3;
``--malloc default`` leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SHAPES = {"S": (32, 64, 64, 128), "M": (64, 128, 128, 256), "L": (16, 1024, 32, 64),
          "Q": (4, 16, 8, 16)}  # name: (B, T, E, H), as scripts/bench_cells.py
LR = 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--shapes", default="M", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--cells", default="lstm,gru", help="comma list of lstm,gru")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (one call of each part)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="tune glibc malloc for both sides (default) or leave it alone")
    p.add_argument("--quick", action="store_true", help="shape Q, 3 rounds: a smoke run")
    p.add_argument("--out", default=None, help="JSON result path")
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.rounds, a.warmup = "Q", 3, 1
    a.shapes, a.cells = a.shapes.split(","), a.cells.split(",")
    for s in a.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; choose from {sorted(SHAPES)}")
    for c in a.cells:
        if c not in ("lstm", "gru"):
            p.error(f"unknown cell {c!r}; choose lstm or gru")
    return a


ARGS = parse_args()
from rnnjax._malloc import malloc_for  # noqa: E402

MALLOC = malloc_for(ARGS.malloc)  # before jax and torch make their first large buffers

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from rnnjax.nn import GRUCell, LSTMCell  # noqa: E402
from rnnjax.nn.fused import _outer_sum, project  # noqa: E402
from rnnjax.nn.gru import gru_scan  # noqa: E402
from rnnjax.nn.layers import Recurrent  # noqa: E402
from rnnjax.nn.lstm import lstm_scan  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

def _ready(out):
    jax.block_until_ready(out)


def jax_parts(cell: str, B: int, T: int, E: int, H: int) -> dict:
    """name -> a synchronous callable, one jitted program each."""
    G = 4 if cell == "lstm" else 3
    Cell = LSTMCell if cell == "lstm" else GRUCell
    if cell == "lstm":
        scan = lstm_scan
    else:
        b_hn = jnp.zeros((H,))

        def scan(w, xp, h0):
            return gru_scan(w, b_hn, xp, h0)
    k = iter(jax.random.split(jax.random.key(0), 16))
    x = jax.random.normal(next(k), (B, T, E))
    model = Recurrent(Cell(E, H, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)

    def apply(p, x):
        return nnx.merge(graphdef, p)(x)

    def train_step(p, x):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(apply(p, x) ** 2))(p)
        return jax.tree.map(lambda a, b: a - LR * b, p, g), loss

    step = jax.jit(train_step, donate_argnums=0)
    state = {"p": jax.tree.map(jnp.copy, params)}

    def run_step():
        state["p"], loss = step(state["p"], x)
        _ready(loss)

    fwd = jax.jit(apply)
    w_ih = 0.1 * jax.random.normal(next(k), (E, G * H))
    b = jnp.zeros((G * H,))
    w_hh = 0.1 * jax.random.normal(next(k), (H, G * H))
    x_tm = jnp.swapaxes(x, 0, 1)
    g_xp = jax.random.normal(next(k), (T, B, G * H))
    proj = jax.jit(jax.value_and_grad(lambda w, b, x, g: jnp.sum(project(x, w, b) * g),
                                      argnums=(0, 1, 2)))
    xp = 0.5 * jax.random.normal(next(k), (T, B, G * H))
    h0 = jnp.zeros((B, H))
    carry0 = (h0, h0) if cell == "lstm" else h0
    gy = jax.random.normal(next(k), (T, B, H))
    loop_fwd = jax.jit(lambda w, xp, c: scan(w, xp, c)[1])
    loop_fb = jax.jit(jax.value_and_grad(lambda w, xp, c, g: jnp.sum(scan(w, xp, c)[1] * g),
                                         argnums=(0, 1, 2)))
    h_seq = jax.random.normal(next(k), (T, B, H))
    outer = jax.jit(_outer_sum)

    def floor(w, h, n_out):  # T dependent matmuls; the slice keeps the chain (B, n_out)
        def body(h, _):
            z = h @ w
            return z[:, :n_out], None
        return jax.lax.scan(body, h, None, length=T)[0]

    floor_fwd = jax.jit(lambda w, h: floor(w, h, H))
    w_t = 0.1 * jax.random.normal(next(k), (G * H, H))
    dz0 = jax.random.normal(next(k), (B, G * H))
    floor_bwd = jax.jit(lambda w, d: _floor_bwd(w, d, T))
    return {
        "train_step": run_step,
        "forward": lambda: _ready(fwd(params, x)),
        "projection_fwd_bwd": lambda: _ready(proj(w_ih, b, x_tm, g_xp)),
        "loop_fwd": lambda: _ready(loop_fwd(w_hh, xp, carry0)),
        "loop_fwd_bwd": lambda: _ready(loop_fb(w_hh, xp, carry0, gy)),
        "dW_hh_outer_sum": lambda: _ready(outer(h_seq, g_xp)),
        "matmul_floor_fwd": lambda: _ready(floor_fwd(w_hh, h0 + 0.1)),
        "matmul_floor_bwd": lambda: _ready(floor_bwd(w_t, dz0)),
    }


def _floor_bwd(w_t, d0, T):
    """T dependent ``(B, G*H) x (G*H, H)`` matmuls: the backward loop's ``dh = dz W_hh^T``;
    the (B, H) result is tiled back to (B, G*H) to feed the next one."""
    G = w_t.shape[0] // w_t.shape[1]

    def body(d, _):
        dh = d @ w_t
        return jnp.tile(dh, (1, G)), None

    return jax.lax.scan(body, d0, None, length=T)[0]


def torch_parts(cell: str, B: int, T: int, E: int, H: int) -> dict:
    torch.manual_seed(0)
    Mod = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    mod = Mod(E, H, batch_first=True)
    params = list(mod.parameters())
    x = torch.randn(B, T, E)
    G = 4 if cell == "lstm" else 3
    w = 0.1 * torch.randn(H, G * H)
    h0 = torch.randn(B, H)

    def step():
        y, _ = mod(x)
        loss = (y * y).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-LR)
        loss.item()

    def forward():
        with torch.no_grad():
            mod(x)

    def floor():
        with torch.no_grad():
            h = h0
            for _ in range(T):
                h = torch.mm(h, w)[:, :H]

    return {"torch_train_step": step, "torch_forward": forward, "torch_matmul_floor_fwd": floor}


def measure(parts: dict, rounds: int, warmup: int) -> dict:
    first = {}
    for name, f in parts.items():
        t0 = time.perf_counter()
        f()
        first[name] = time.perf_counter() - t0
    for _ in range(warmup):
        for f in parts.values():
            f()
    times = {n: [] for n in parts}
    for _ in range(rounds):
        for n, f in parts.items():  # alternate: noise hits every part alike
            t0 = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t0)
    return {n: {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
                "first_call_s": first[n]} for n, ts in times.items()}


def shares(r: dict) -> dict:
    """The step split into parts (ms, from medians). ``loop_bwd`` is loop_fwd_bwd minus
    loop_fwd; the gates and the rest of each loop are the loop minus its matmul floor
    (and, backward, minus the outer sum)."""
    m = {n: v["median_ms"] for n, v in r.items()}
    loop_bwd = m["loop_fwd_bwd"] - m["loop_fwd"]
    out = {
        "recurrent_matmuls_fwd": m["matmul_floor_fwd"],
        "recurrent_matmuls_bwd": m["matmul_floor_bwd"],
        "loop_fwd_rest": m["loop_fwd"] - m["matmul_floor_fwd"],
        "loop_bwd_rest": loop_bwd - m["matmul_floor_bwd"] - m["dW_hh_outer_sum"],
        "dW_hh_outer_sum": m["dW_hh_outer_sum"],
        "projection_fwd_bwd": m["projection_fwd_bwd"],
    }
    out["loss_sgd_layout_rest"] = m["train_step"] - sum(out.values())
    return out


def main() -> int:
    args = ARGS
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
    env = {"python": sys.version.split()[0], "jax": jax.__version__,
           "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
           "torch": None if torch is None else torch.__version__,
           "torch_threads": args.torch_threads if torch is not None else None,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc": MALLOC,
           "loadavg_start": os.getloadavg()}
    print(f"jax {env['jax']} on {env['backend']}; torch {env['torch']} "
          f"(threads {env['torch_threads']}); malloc tuned: {MALLOC['applied']}; "
          f"load {env['loadavg_start'][0]:.1f}", flush=True)
    cases = []
    for shape in args.shapes:
        B, T, E, H = SHAPES[shape]
        for cell in args.cells:
            parts = jax_parts(cell, B, T, E, H)
            if torch is not None:
                parts.update(torch_parts(cell, B, T, E, H))
            r = measure(parts, args.rounds, args.warmup)
            sh = shares(r)
            case = {"shape": shape, "cell": cell, "B": B, "T": T, "E": E, "H": H,
                    "parts": r, "split_ms": sh}
            if torch is not None:
                case["ratio_train_step"] = (r["torch_train_step"]["median_ms"]
                                            / r["train_step"]["median_ms"])
            cases.append(case)
            print(f"\n{shape} {cell} (B={B}, T={T}, E={E}, H={H}): part, median ms, min ms")
            for n, v in r.items():
                print(f"  {n:24} {v['median_ms']:9.2f} {v['min_ms']:9.2f}")
            step = r["train_step"]["median_ms"]
            print("  the step split (median ms, share of rnnjax's train_step):")
            for n, v in sh.items():
                print(f"    {n:24} {v:9.2f} {100 * v / step:6.1f}%")
            if "ratio_train_step" in case:
                print(f"  rnnjax / torch, train step (tokens/s ratio): "
                      f"{case['ratio_train_step']:.2f}")
    env["loadavg_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "args": vars(args), "cases": cases}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
