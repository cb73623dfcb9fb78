"""Median (and minimum) of 10 training-step times for docs/cells/lstm_variants.md (issue 13).

Run from the repository root: ``PYTHONPATH=$PWD python docs/cells/bench_variants.py zoneout``
(LSTM with and without zoneout, B=32, T=64, E=64, H=128) or ``... resets`` (LSTM and GRU
with and without packed-segment resets, B=32, T=128, E=64, H=128); a second argument sets
the number of rounds (default 10). The variants are timed
interleaved, so that a change of machine load hits them alike.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.nn import Recurrent, make_cell


def step_fn(cell_name, B, T, E, H, use_resets, **kw):
    cell = make_cell(cell_name, E, H, rngs=nnx.Rngs(params=0, dropout=1), **kw)
    layer = Recurrent(cell)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, E)).astype(np.float32))
    r = np.random.default_rng(1).random((B, T)) < 1 / 16  # segments of ~16 steps
    r[:, 0] = False
    resets = jnp.asarray(r) if use_resets else None
    @jax.jit
    def train_step(params, rest):
        def loss(p):
            m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
            y = m(x, resets=resets)
            return jnp.mean(y ** 2), nnx.state(m, nnx.RngState)
        (l, new_rest), g = jax.value_and_grad(loss, has_aux=True)(params)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, params, g), l
    return train_step, params, rest

def bench(fns, reps=10):
    times = {k: [] for k in fns}
    for f, p, r in fns.values():  # compile
        jax.block_until_ready(f(p, r))
    for _ in range(reps):
        for k, (f, p, r) in fns.items():  # interleaved, so load changes hit all alike
            t0 = time.perf_counter()
            jax.block_until_ready(f(p, r))
            times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)) * 1e3, float(np.min(v)) * 1e3) for k, v in times.items()}

which = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
if which == "zoneout":
    res = bench(reps=reps, fns={"lstm": step_fn("lstm", 32, 64, 64, 128, False),
                 "lstm+zoneout0.1": step_fn("lstm", 32, 64, 64, 128, False, zoneout=0.1),
                 "lstm impl=scan": step_fn("lstm", 32, 64, 64, 128, False, impl="scan")})
else:
    res = bench(reps=reps, fns={f"{c}{'+resets' if r else ''}": step_fn(c, 32, 128, 64, 128, r)
                                for c in ("lstm", "gru") for r in (False, True)})
for k, (med, best) in res.items():
    print(f"{k:20s} median {med:8.2f} ms   min {best:8.2f} ms")
