#!/usr/bin/env python
"""End-to-end training speed: ``rnnjax train`` against plain PyTorch scripts, same jobs.

Each job runs end to end on both sides, alternately (rnnjax, torch, rnnjax, torch, ...),
every run in a fresh process, and the result is training tokens/s in the steady state:

* ``rnnjax``: ``python -m rnnjax train --config configs/<x>.py`` with overrides (steps,
  log interval, no TensorBoard/plots, eval and checkpoint only at the end, and the shape
  keys set explicitly), in a temporary workdir. Its tokens/s is read from what it logs:
  ``steps_per_sec`` of the ``train`` rows of ``metrics.jsonl`` times tokens per step,
  over the rows after the first ``--skip-rows`` (the first row holds compilation). The
  loop's own data pipeline (prefetch thread) and its per-step metrics are included, as
  a user sees them.
* ``torch``: a plain PyTorch script contained here (``torch_char_lm``,
  ``torch_classify``, ``torch_adding``; ~40-60 lines each), ``torch.set_num_threads(2)``,
  the same shapes, optimiser (Adam, the config's schedule), clipping, dropout and data
  sizes, run as ``python bench_e2e.py --torch-worker JOB``. Its tokens/s is timed over
  the same steps as rnnjax's rows (the first ``skip_rows * log_every`` steps excluded),
  including drawing the batch, as in a training loop. The worker keeps OpenMP's own
  (spinning) wait policy, as a user's torch runs. ``--omp-wait passive`` sets
  ``OMP_WAIT_POLICY=PASSIVE``, for a loaded machine only: there torch's spinning 2-thread
  step collapsed 20-35x (measured 2026-11-29 at load 20: LSTM 256 x 2 fwd+bwd 0.4 s passive
  or 1 thread, 2-21 s spinning), but on an idle machine passive waiting slows torch itself
  (char-LM LSTM 34.8k tokens/s spinning, 18.4k passive; docs/performance.md §10).
* ``torch_ops`` (opt-in side): the same PyTorch scripts with oneDNN switched off in the
  worker (``torch.backends.mkldnn.enabled = False``). On a CPU torch runs ``nn.LSTM``
  through oneDNN's fused RNN primitive (``aten::mkldnn_rnn_layer``); with it off, the LSTM
  runs op by op, as ``nn.GRU`` always does (docs/performance.md §19). Each job's row then
  also gives rnnjax / torch_ops.

Jobs (shapes from the configs; tokens per step = B x T, padding included):

* ``char_lm``: configs/char_lm.py, builtin:sonnets, embedding 64, 2-layer LSTM 256,
  dropout 0.2, B=32, T=100, Adam warmup-cosine 2e-3, clip 5;
* ``char_lm_gru``: the same with ``cell=gru``;
* ``classify``: configs/text_classify.py (word level, embedding 64, LSTM 64, max pooling,
  MLP head 64, dropout 0.2, class-weighted loss, B=32, T=32 after bucketing, Adam 2e-3,
  clip 1) on the builtin SMS sample tiled to 5,574 lines (the SMS Spam Collection's size:
  the 30-line sample gives 24 training messages, fewer than one batch of 32);
* ``adding``: configs/adding.py (LSTM 64, last state, B=64, T=100, Adam warmup-cosine
  3e-3, clip 1).

Allocator: ``--malloc tuned`` (default) tunes glibc malloc (rnnjax._malloc, docs/performance.md
§3) on both sides: the torch worker calls ``tune_malloc()`` before importing torch and the
rnnjax side gets ``RNNJAX_MALLOC=tuned``; ``--malloc default`` leaves glibc alone on both
(``RNNJAX_MALLOC=default``). ``--sides rnnjax`` with ``--malloc tuned,default`` alternates
the two allocators on the rnnjax side alone (the allocator decision, docs/performance.md).

Usage::

    python scripts/bench_e2e.py --repeats 2                    # all jobs (~15 min, loaded 2 cores)
    python scripts/bench_e2e.py --jobs char_lm --sides rnnjax --malloc tuned,default
    python scripts/bench_e2e.py --smoke                        # tiny shapes, a few steps
    python scripts/bench_e2e.py --jobs char_lm,adding --sides rnnjax,torch,torch_ops
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMS_LINES = 5574  # the UCI SMS Spam Collection's size

# The shape keys of each job, set explicitly on the rnnjax side so both sides match
# (the values are the configs'); ``smoke`` shrinks them.
JOBS = {
    "char_lm": dict(config="configs/char_lm.py", kind="lm", cell="lstm", B=32, T=100, E=64,
                    H=256, layers=2, dropout=0.2, lr=2e-3, warmup=200, end=0.1, clip=5.0,
                    steps=300),
    "char_lm_gru": dict(config="configs/char_lm.py:cell=gru", kind="lm", cell="gru", B=32,
                        T=100, E=64, H=256, layers=2, dropout=0.2, lr=2e-3, warmup=200,
                        end=0.1, clip=5.0, steps=300),
    "classify": dict(config="configs/text_classify.py", kind="classify", cell="lstm", B=32,
                     T=32, E=64, H=64, layers=1, dropout=0.2, lr=2e-3, warmup=0, end=1.0,
                     clip=1.0, steps=500),
    "adding": dict(config="configs/adding.py", kind="adding", cell="lstm", B=64, T=100, E=2,
                   H=64, layers=1, dropout=0.0, lr=3e-3, warmup=100, end=0.05, clip=1.0,
                   steps=400),
}
SMOKE = dict(B=8, H=16, E=8, steps=8)


def log(*a):
    print(*a, flush=True)


def job_spec(name: str, smoke: bool) -> dict:
    spec = dict(JOBS[name], name=name)
    if smoke:
        spec.update(B=SMOKE["B"], H=SMOKE["H"], steps=SMOKE["steps"])
        if spec["kind"] == "lm":
            spec.update(E=SMOKE["E"], T=16)
        elif spec["kind"] == "classify":
            spec.update(E=SMOKE["E"])
        else:
            spec.update(T=16)
    return spec


def rnnjax_overrides(spec: dict, steps: int, log_every: int, data_path: str | None) -> list[str]:
    o = {"train.steps": steps, "train.log_every": log_every, "train.eval_every": steps,
         "train.checkpoint_every": steps, "train.tensorboard": False, "train.plots": False,
         "train.batch_size": spec["B"], "model.hidden": spec["H"],
         "model.num_layers": spec["layers"], "model.dropout": spec["dropout"],
         "optim.lr": spec["lr"], "optim.clip_value": spec["clip"]}
    if spec["kind"] == "lm":
        o.update({"data.seq_len": spec["T"], "model.embed_dim": spec["E"],
                  "train.eval_batches": 1})
    elif spec["kind"] == "classify":
        o.update({"model.embed_dim": spec["E"], "data.path": data_path})
    else:
        o.update({"data.seq_len": spec["T"], "train.eval_batches": 1})
    return [f"--config.{k}={v}" for k, v in o.items()]


def sms_file(tmp: Path) -> str:
    """The builtin SMS sample tiled to SMS Spam's size (one copy per process tree)."""
    path = tmp / "sms_tiled.tsv"
    if not path.exists():
        lines = (ROOT / "rnnjax/data/builtin/sms_sample.tsv").read_text().splitlines()
        lines = [ln for ln in lines if ln.strip()]
        path.write_text("\n".join(lines[i % len(lines)] for i in range(SMS_LINES)) + "\n")
    return str(path)


def steady_rate(rows: list[dict], log_every: int, skip_rows: int) -> dict:
    """Steps/s over the train rows after the first ``skip_rows``: total steps / total time."""
    rows = [r for r in rows if r.get("split") == "train" and "steps_per_sec" in r]
    rows.sort(key=lambda r: r["step"])
    steady = rows[skip_rows:]
    if not steady:
        raise RuntimeError(f"no steady-state rows: {len(rows)} logged, {skip_rows} skipped")
    prev = [rows[skip_rows - 1]["step"] if skip_rows else 0] + [r["step"] for r in steady[:-1]]
    n = [r["step"] - p for r, p in zip(steady, prev)]
    secs = sum(k / r["steps_per_sec"] for k, r in zip(n, steady))
    return {"steps_per_s": sum(n) / secs, "steady_steps": sum(n),
            "first_row_s": log_every / rows[0]["steps_per_sec"],
            "row_steps_per_s": [r["steps_per_sec"] for r in steady]}


def run_rnnjax(spec, steps, log_every, skip_rows, malloc, tmp: Path, rep: int) -> dict:
    workdir = tmp / f"rnnjax_{spec['name']}_{malloc}_{rep}"
    data = sms_file(tmp) if spec["kind"] == "classify" else None
    cmd = [sys.executable, "-m", "rnnjax", "train", "--config", spec["config"], "--workdir",
           str(workdir), "--no-progress", *rnnjax_overrides(spec, steps, log_every, data)]
    env = dict(os.environ, RNNJAX_MALLOC=malloc,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"rnnjax train failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    out = steady_rate(rows, log_every, skip_rows)
    out.update(tokens_per_s=out["steps_per_s"] * spec["B"] * spec["T"], wall_s=wall,
               final_train_loss=[r["loss"] for r in rows if r.get("split") == "train"][-1])
    return out


def run_torch(spec, steps, skip_steps, malloc, threads, tmp: Path, onednn: bool = True) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", spec["name"],
            "--steps", str(steps), "--skip-steps", str(skip_steps), "--malloc", malloc,
            "--torch-threads", str(threads), "--tmp", str(tmp)]
    if not onednn:
        args.append("--torch-no-onednn")
    if ARGS.smoke:
        args.append("--smoke")
    env = dict(os.environ)
    if ARGS.omp_wait == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"torch worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


# ---------------------------------------------------------------------------
# The plain PyTorch side. Each function is a whole training script: data, model,
# Adam with the config's schedule, global-norm clipping, a timed loop.
# ---------------------------------------------------------------------------
def lr_at(spec, step, total):
    """optax.warmup_cosine_decay_schedule(0, lr, warmup, total, lr*end), or constant."""
    lr, w = spec["lr"], spec["warmup"]
    if w == 0 and spec["end"] == 1.0:
        return lr
    if step < w:
        return lr * step / w
    frac = min(step - w, total - w) / max(total - w, 1)
    return lr * spec["end"] + (lr - lr * spec["end"]) * 0.5 * (1 + math.cos(math.pi * frac))


def timed_loop(torch, spec, steps, skip, model, opt, draw, loss_of):
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        batch = draw()
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, steps)
        loss = loss_of(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["clip"])
        opt.step()
        loss_value = loss.item()  # rnnjax fetches its loss too (at log steps)
        times.append(time.perf_counter() - t0)
    steady = times[skip:]
    return {"steps_per_s": len(steady) / sum(steady), "steady_steps": len(steady),
            "first_steps_s": sum(times[:skip]), "median_step_s": statistics.median(steady),
            "final_train_loss": loss_value}


def torch_char_model(torch, spec, vocab_size):
    nn = torch.nn
    Rnn = nn.LSTM if spec["cell"] == "lstm" else nn.GRU

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, spec["E"])
            self.rnn = Rnn(spec["E"], spec["H"], spec["layers"], batch_first=True,
                           dropout=spec["dropout"])
            self.drop = nn.Dropout(spec["dropout"])
            self.out = nn.Linear(spec["H"], vocab_size)

        def forward(self, x):
            y, _ = self.rnn(self.embed(x))
            return self.out(self.drop(y))

    return CharRNN()


def torch_char_lm(torch, spec, steps, skip):
    nn = torch.nn
    text = (ROOT / "rnnjax/data/builtin/sonnets.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    train = ids[: int(len(ids) * 0.9)]
    B, T = spec["B"], spec["T"]
    model = torch_char_model(torch, spec, len(chars))
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    offsets = torch.arange(T + 1)

    def draw():
        chunk = train[torch.randint(0, len(train) - T - 1, (B,))[:, None] + offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def loss_of(batch):
        x, y = batch
        logits = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return timed_loop(torch, spec, steps, skip, model, opt, draw, loss_of)


def torch_classify(torch, spec, steps, skip, data_path):
    import re

    nn = torch.nn
    rows = [ln.split("\t", 1) for ln in Path(data_path).read_text().splitlines() if ln.strip()]
    labels = sorted({lab for lab, _ in rows})
    toks = [re.findall(r"\w+|[^\w\s]", t.lower()) for _, t in rows]
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for ts in toks for w in ts}))}
    n_train = int(len(rows) * 0.8)
    T = spec["T"]  # every message is shorter than 32 tokens: bucketing pads to 32
    x_all = torch.zeros(len(rows), T, dtype=torch.long)
    lengths = torch.tensor([min(len(ts), T) for ts in toks])
    for i, ts in enumerate(toks):
        x_all[i, : lengths[i]] = torch.tensor([vocab[w] for w in ts[:T]])
    y_all = torch.tensor([labels.index(lab) for lab, _ in rows])
    counts = torch.bincount(y_all[:n_train]).float()
    class_w = n_train / (len(labels) * counts)  # scikit-learn's "balanced", as rnnjax
    model = nn.ModuleDict({
        "embed": nn.Embedding(len(vocab) + 2, spec["E"]),
        "rnn": nn.LSTM(spec["E"], spec["H"], batch_first=True),
        "head": nn.Sequential(nn.Linear(spec["H"], 64), nn.ReLU(), nn.Dropout(spec["dropout"]),
                              nn.Linear(64, len(labels)))})
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])

    def draw():
        idx = torch.randint(0, n_train, (spec["B"],))
        return x_all[idx], lengths[idx], y_all[idx]

    def loss_of(batch):
        x, n, y = batch
        ys, _ = model["rnn"](model["embed"](x))
        mask = (torch.arange(T)[None, :] < n[:, None])[..., None]
        pooled = ys.masked_fill(~mask, float("-inf")).amax(1)  # max over valid steps
        nll = nn.functional.cross_entropy(model["head"](pooled), y, reduction="none")
        w = class_w[y]
        return (nll * w).sum() / w.sum()

    return timed_loop(torch, spec, steps, skip, model, opt, draw, loss_of)


def torch_adding_model(torch, spec):
    """The adding job's model, ``[LSTM, Linear]``, and its loss on a batch ``(x, y)``."""
    nn = torch.nn
    rnn, head = nn.LSTM(spec["E"], spec["H"], batch_first=True), nn.Linear(spec["H"], 1)

    def loss_of(batch):
        x, y = batch
        _, (h, _) = rnn(x)
        return ((head(h[-1]) - y) ** 2).mean()

    return nn.ModuleList([rnn, head]), loss_of


def torch_adding(torch, spec, steps, skip):
    B, T = spec["B"], spec["T"]
    model, loss_of = torch_adding_model(torch, spec)
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])

    def draw():  # the adding problem, as rnnjax.data.synthetic.adding_problem
        values = torch.rand(B, T)
        markers = torch.zeros(B, T)
        rows = torch.arange(B)
        first, second = torch.randint(0, T // 2, (B,)), torch.randint(T // 2, T, (B,))
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = values[rows, first] + values[rows, second]
        return torch.stack([values, markers], -1), target[:, None]

    return timed_loop(torch, spec, steps, skip, model, opt, draw, loss_of)


def torch_worker(args) -> None:
    if args.malloc == "tuned":
        from rnnjax._malloc import tune_malloc

        tune_malloc()
    try:
        import torch
    except ImportError:
        sys.exit("bench_e2e: the PyTorch side needs torch (pip install torch==2.13.0); "
                 "run --sides rnnjax to measure rnnjax alone")
    torch.set_num_threads(args.torch_threads)
    if args.torch_no_onednn:
        torch.backends.mkldnn.enabled = False  # nn.LSTM then runs op by op, as nn.GRU does
    torch.manual_seed(0)
    spec = job_spec(args.torch_worker, args.smoke)
    if spec["kind"] == "lm":
        out = torch_char_lm(torch, spec, args.steps, args.skip_steps)
    elif spec["kind"] == "classify":
        out = torch_classify(torch, spec, args.steps, args.skip_steps, sms_file(Path(args.tmp)))
    else:
        out = torch_adding(torch, spec, args.steps, args.skip_steps)
    out["tokens_per_s"] = out["steps_per_s"] * spec["B"] * spec["T"]
    out["torch"] = torch.__version__
    out["torch_onednn"] = bool(torch.backends.mkldnn.enabled)
    print(json.dumps(out))


# ---------------------------------------------------------------------------
# Where the time goes (--breakdown): one char-LM or adding step taken apart, in one process,
# the components timed alternately (one call of each per round), medians in ms.
# ---------------------------------------------------------------------------
def breakdown(name: str, rounds: int, threads: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from rnnjax.configlib import load_config
    from rnnjax.tasks.base import build
    from rnnjax.train.optim import make_optimizer
    from rnnjax.train.state import create_train_state
    from rnnjax.train.steps import make_train_step

    spec = job_spec(name, ARGS.smoke)
    if spec["kind"] not in ("lm", "adding"):
        raise SystemExit("--breakdown takes char_lm, char_lm_gru or adding")
    B, T, H = spec["B"], spec["T"], spec["H"]
    over = [o[len("--config."):] for o in rnnjax_overrides(spec, 1000, 25, None)]
    config = load_config(spec["config"], over)
    task, model = build(config, None)
    model.train()
    graphdef, params, rng_state, consts = nnx.split(model, nnx.Param, nnx.RngState, ...)
    clip_tx, opt_tx = make_optimizer(config.optim, 1000)
    it = task.train_iterator(B, 0)

    def put(b):
        return {k: jax.device_put(np.asarray(v)) for k, v in b.items()}

    batch = put(next(it))
    fresh = lambda t: jax.tree.map(lambda v: v, t)  # noqa: E731 (as rnnjax.train.steps)
    comps = {}

    # (a) the trainer's jitted step (loss, grads, clip, Adam, the logged norms), donated.
    st = {"s": create_train_state(params, opt_tx, task.init_task_state(model, B))}
    step = jax.jit(make_train_step(task, graphdef, rng_state, consts, clip_tx, opt_tx),
                   donate_argnums=0)
    rng = jax.random.PRNGKey(0)

    def full():
        st["s"], m = step(st["s"], batch, rng)
        m["loss"].block_until_ready()
    comps["train_step"] = full

    # (b) loss and gradients only (dropout on): the model's forward + backward.
    # Arrays go in as arguments, never closed over: XLA would fold constants.
    def loss_fn(p, b):
        return task.loss(nnx.merge(graphdef, p, fresh(rng_state), consts), b, {}, True)[0]
    grad = jax.jit(jax.value_and_grad(loss_fn))
    comps["loss_and_grads"] = lambda: grad(params, batch)[0].block_until_ready()
    fwd = jax.jit(loss_fn)
    comps["loss_forward"] = lambda: fwd(params, batch).block_until_ready()

    # (c) the recurrent stack alone, forward + backward, on the embedded batch.
    enc_graph, enc_params, enc_rest = nnx.split(model.encoder, nnx.Param, ...)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, T, spec["E"]))
    g = jax.random.normal(jax.random.PRNGKey(2), (B, T, H))

    def enc_loss(p, x, g):
        return jnp.sum(nnx.merge(enc_graph, p, fresh(enc_rest))(x) * g)
    enc = jax.jit(jax.value_and_grad(enc_loss, argnums=(0, 1)))
    comps["recurrent_fwd_bwd"] = lambda: enc(enc_params, x, g)[0].block_until_ready()

    # (d) the rest of the model (the recurrent stack replaced by a fixed input), fwd + bwd.
    # char-LM: embedding gather/scatter, dropout, output layer, softmax cross-entropy;
    # adding: the last-state pooling, the MLP head and the MSE.
    if spec["kind"] == "lm":
        head_graph, head_params, head_rest = nnx.split(
            nnx.Dict(embed=model.embed, out=model.out, drop=model.dropout), nnx.Param, ...)
        ys = jax.random.normal(jax.random.PRNGKey(3), (B, T, H))
        gx = jax.random.normal(jax.random.PRNGKey(4), (B, T, spec["E"]))

        def head_loss(p, ys, gx, b):
            m = nnx.merge(head_graph, p, fresh(head_rest))
            logits = m["out"](m["drop"](ys))
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
            return jnp.mean(nll) + jnp.sum(m["embed"](b["inputs"]) * gx)
        head = jax.jit(jax.value_and_grad(head_loss, argnums=(0, 1)))
        comps["embed_output_ce_fwd_bwd"] = lambda: head(head_params, ys, gx, batch)[0] \
            .block_until_ready()
    else:
        head_graph, head_params, head_rest = nnx.split(model.head, nnx.Param, ...)
        ys = jax.random.normal(jax.random.PRNGKey(3), (B, T, H))

        def head_loss(p, ys, b):
            pred = nnx.merge(head_graph, p, fresh(head_rest))(ys[:, -1])
            return jnp.mean((pred - b["targets"]) ** 2)
        head = jax.jit(jax.value_and_grad(head_loss, argnums=(0, 1)))
        comps["last_state_head_mse_fwd_bwd"] = lambda: head(head_params, ys, batch)[0] \
            .block_until_ready()

    # (e) the optimiser alone: clip, Adam, apply, and the norms the step logs.
    grads = jax.tree.map(jnp.ones_like, params)
    ost = {"p": jax.tree.map(jnp.copy, params), "o": opt_tx.init(params)}

    def opt_fn(p, o, gr):
        clipped, _ = clip_tx.update(gr, clip_tx.init(p), p)
        upd, o = opt_tx.update(clipped, o, p)
        p = optax.apply_updates(p, upd)
        fin = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p)]))
        return p, o, (optax.tree.norm(gr), optax.tree.norm(clipped), optax.tree.norm(upd),
                      optax.tree.norm(p), fin)
    opt = jax.jit(opt_fn, donate_argnums=(0, 1))

    def opt_call():
        ost["p"], ost["o"], n = opt(ost["p"], ost["o"], grads)
        n[0].block_until_ready()
    comps["optimizer_and_norms"] = opt_call

    # (f) data: draw a batch on the host and put it on the device.
    def data():
        b = put(next(it))
        b["inputs"].block_until_ready()
    comps["data_draw_and_put"] = data

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:  # the same split of torch's step
        torch.set_num_threads(threads)
        if ARGS.torch_no_onednn:
            torch.backends.mkldnn.enabled = False
        torch.manual_seed(0)
        tx = torch.from_numpy(np.array(batch["inputs"]))
        ty = torch.from_numpy(np.array(batch["targets"]))
        if spec["kind"] == "lm":
            V = len(task.vocab)
            tm = torch_char_model(torch, spec, V)
            trnn_mod = tm.rnn
            tx, ty = tx.long(), ty.long()

            def tloss():
                return torch.nn.functional.cross_entropy(tm(tx).reshape(-1, V), ty.reshape(-1))
        else:
            tm, adding_loss = torch_adding_model(torch, spec)
            trnn_mod = tm[0]

            def tloss():
                return adding_loss((tx, ty))
        topt = torch.optim.Adam(tm.parameters(), lr=spec["lr"])
        tparams = list(tm.parameters())

        def tstep():
            loss = tloss()
            topt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tparams, spec["clip"])
            topt.step()
            loss.item()
        comps["torch_train_step"] = tstep
        temb = torch.randn(B, T, spec["E"], requires_grad=True)
        tg = torch.randn(B, T, H)

        def trnn():
            y, _ = trnn_mod(temb)
            (y * tg).sum().backward()
        comps["torch_recurrent_fwd_bwd"] = trnn

    for fn in comps.values():  # compile and warm up
        fn()
        fn()
    times = {k: [] for k in comps}
    for _ in range(rounds):
        for k, fn in comps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {"job": name, "rounds": rounds, "torch_onednn": None if torch is None else
            bool(torch.backends.mkldnn.enabled),
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "tokens_per_step": B * T}


# ---------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default=",".join(JOBS), help=f"comma list of {list(JOBS)}")
    p.add_argument("--sides", default="rnnjax,torch",
                   help="comma list of rnnjax,torch,torch_ops (torch with oneDNN off)")
    p.add_argument("--steps", type=int, default=None,
                   help="train steps per run (default: per job, 300-500)")
    p.add_argument("--repeats", type=int, default=3, help="runs per side and job")
    p.add_argument("--log-every", type=int, default=25, help="rnnjax's train.log_every")
    p.add_argument("--skip-rows", type=int, default=2,
                   help="first logged rows left out (compilation); torch skips as many steps")
    p.add_argument("--malloc", default="tuned",
                   help="tuned | default, or tuned,default to alternate them (both sides)")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--omp-wait", choices=("passive", "default"), default="default",
                   help="torch's OpenMP wait policy: OpenMP's own (spinning, the default, as "
                        "users run torch) or passive (OMP_WAIT_POLICY=PASSIVE), for a loaded "
                        "machine only, where spinning threads made torch's 2-thread LSTM step "
                        "20-35x slower (load 20); on an idle machine passive slows torch")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and 8 steps: a smoke run")
    p.add_argument("--out", default="bench_results/bench_e2e.json", help="JSON result path")
    p.add_argument("--breakdown", default=None, metavar="JOB",
                   help="time the parts of one train step (char_lm, char_lm_gru or adding) "
                        "in this process instead of the end-to-end runs")
    p.add_argument("--rounds", type=int, default=30, help="--breakdown: timed rounds")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--torch-no-onednn", action="store_true",
                   help="--breakdown: torch's side with oneDNN off (nn.LSTM op by op)")
    p.add_argument("--skip-steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    args.mallocs = [m.strip() for m in args.malloc.split(",") if m.strip()]
    for what, vals, ok in (("jobs", args.jobs, JOBS),
                           ("sides", args.sides, ("rnnjax", "torch", "torch_ops")),
                           ("malloc", args.mallocs, ("tuned", "default"))):
        bad = [v for v in vals if v not in ok]
        if bad or not vals:
            p.error(f"unknown or empty --{what} {bad}; known: {list(ok)}")
    if args.smoke:
        args.log_every, args.skip_rows = 2, 1
    return args


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    import jax  # only for the record; the runs are subprocesses

    env["jax"] = jax.__version__
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    log(f"bench_e2e: jobs {ARGS.jobs}, sides {ARGS.sides}, malloc {ARGS.mallocs}, "
        f"{ARGS.repeats} repeats, workdirs in {tmp}; load {env['loadavg_start']}")
    for name in ARGS.jobs:
        spec = job_spec(name, ARGS.smoke)
        steps = ARGS.steps or spec["steps"]
        steps = max(ARGS.log_every * (ARGS.skip_rows + 1),
                    steps // ARGS.log_every * ARGS.log_every)
        skip_steps = ARGS.skip_rows * ARGS.log_every
        runs = {f"{s}/{m}": [] for s in ARGS.sides for m in ARGS.mallocs}
        for rep in range(ARGS.repeats):
            for side in ARGS.sides:  # alternate: A, B, A, B, ...
                for m in ARGS.mallocs:
                    load = os.getloadavg()[0]
                    if side == "rnnjax":
                        r = run_rnnjax(spec, steps, ARGS.log_every, ARGS.skip_rows, m, tmp, rep)
                    else:
                        r = run_torch(spec, steps, skip_steps, m, ARGS.torch_threads, tmp,
                                      onednn=side == "torch")
                    r["load1_before"] = load
                    runs[f"{side}/{m}"].append(r)
                    log(f"  {name:12s} {side:6s} malloc={m:7s} rep {rep}: "
                        f"{r['tokens_per_s']:9.0f} tok/s  (wall {r['wall_s']:.0f} s, "
                        f"load {load:.1f})")
        row = {"job": name, "spec": spec, "steps": steps, "skip_steps": skip_steps,
               "tokens_per_step": spec["B"] * spec["T"], "runs": runs,
               "median_tokens_per_s": {k: median([r["tokens_per_s"] for r in v])
                                       for k, v in runs.items()}}
        med = row["median_tokens_per_s"]
        for m in ARGS.mallocs:
            for side, key in (("torch", "ratio"), ("torch_ops", "ratio_to_torch_ops")):
                if f"rnnjax/{m}" in med and f"{side}/{m}" in med:
                    ratios = [a["tokens_per_s"] / b["tokens_per_s"]
                              for a, b in zip(runs[f"rnnjax/{m}"], runs[f"{side}/{m}"])]
                    row.setdefault(key, {})[m] = {
                        "of_medians": med[f"rnnjax/{m}"] / med[f"{side}/{m}"],
                        "per_pair": ratios, "median_per_pair": median(ratios)}
        if "rnnjax/tuned" in med and "rnnjax/default" in med:
            row["rnnjax_tuned_over_default"] = med["rnnjax/tuned"] / med["rnnjax/default"]
        results.append(row)
        log(f"{name}: medians " + ", ".join(f"{k} {v:.0f}" for k, v in med.items())
            + "".join(f"; ratio rnnjax/torch ({m}) {r['of_medians']:.2f}"
                      for m, r in row.get("ratio", {}).items())
            + "".join(f"; ratio rnnjax/torch_ops ({m}) {r['of_medians']:.2f}"
                      for m, r in row.get("ratio_to_torch_ops", {}).items())
            + (f"; rnnjax tuned/default {row['rnnjax_tuned_over_default']:.2f}"
               if "rnnjax_tuned_over_default" in row else ""))
    env["loadavg_end"] = os.getloadavg()
    log("\n| job | tokens/step | " + " | ".join(f"{k} tok/s" for k in results[0]["runs"])
        + " | rnnjax/torch | rnnjax/torch_ops |")
    log("|---|---|" + "---|" * (len(results[0]["runs"]) + 2))
    for row in results:
        ratio, ops = ("; ".join(f"{r['of_medians']:.2f}" for r in row.get(k, {}).values())
                      for k in ("ratio", "ratio_to_torch_ops"))
        log(f"| {row['job']} | {row['tokens_per_step']} | "
            + " | ".join(f"{v:.0f}" for v in row["median_tokens_per_s"].values())
            + f" | {ratio or '-'} | {ops or '-'} |")
    log(f"load average start {env['loadavg_start']}, end {env['loadavg_end']}")
    out = Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(ARGS).items()}, "env": env,
                               "results": results}, indent=1))
    log(f"wrote {out}")


ARGS = parse_args()

if __name__ == "__main__":
    if ARGS.torch_worker:
        torch_worker(ARGS)
    elif ARGS.breakdown:
        if ARGS.mallocs[0] == "tuned":  # before jax is imported
            from rnnjax._malloc import tune_malloc

            tune_malloc()
        load0 = os.getloadavg()
        r = breakdown(ARGS.breakdown, ARGS.rounds, ARGS.torch_threads)
        r.update(malloc=ARGS.mallocs[0], loadavg_start=load0, loadavg_end=os.getloadavg())
        for k, v in r["median_ms"].items():
            log(f"  {k:26s} {v:8.2f} ms")
        Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ARGS.out).write_text(json.dumps(r, indent=1))
        log(f"load {load0} -> {r['loadavg_end']}; wrote {ARGS.out}")
    else:
        main()
