"""MQAR accuracy against model width for every recurrent family and attention
(Arora et al. 2023, "Zoology", Fig. 2), with two pre-norm residual blocks per model.

Launch:

    rnnjax sweep experiments/mqar.py:quick --workers 2      # CPU scale, docs/studies/mqar.md
    rnnjax report experiments/mqar.py:quick
    rnnjax sweep experiments/mqar.py --workers 8             # the full grid, for a GPU

Smoke (CI, seconds): ``rnnjax sweep experiments/mqar.py --smoke``.

Grids:

* full: (T, pairs) in {(64, 4), (128, 8), (256, 16)} x width {64, 128, 256, 512} x 10
  mixers x 3 seeds, vocab 8192, 100k train / 3k test examples (configs/mqar.py); 360 runs,
  unmeasured, a GPU job.
* quick: T=64, 4 pairs, vocab 256, widths {32, 64}, 2 blocks, 400 steps of batch 32, one
  seed: 20 runs.

EXPECTED FINDING (Zoology, Fig. 2; Based and GDN papers repeat it): attention solves MQAR
at every sequence length, number of pairs and width (its KV cache keeps every pair);
recurrent mixers have a fixed-size state and need it to grow with the number of key-value
pairs: gated linear-attention / delta-rule models with matrix states (mLSTM, Gated
DeltaNet, Mamba-2) approach attention once the width (so the state) is large enough,
while vector-state recurrences (LSTM, GRU, minGRU, LRU, RG-LRU, sLSTM) stay far below.

MEASURED here (quick grid, seed 0, 2026-11-29; table and plot in docs/studies/mqar.md):
attention is the only mixer off the chance plateau after 400 steps, 0.184 accuracy at width
64 and 0.033 at width 32 (chance 0.0078), and still rising; every recurrent family measured
stays at chance (0.004-0.011) at both widths, so at this budget the ordering attention >
recurrent reproduces but "attention solves it" and the matrix- vs vector-state split do
not. Gated DeltaNet (measured after a deadlock fix, see the doc) is at chance too.
"""

from rnnjax.configlib import parse_arg

# Attention first: the reference point is measured first when a quick sweep is cut short.
FAMILIES = ["attention", "lstm", "gru", "min_gru", "lru", "slstm", "mlstm", "rglru", "mamba2",
            "gated_deltanet"]


def get_sweep(arg=None):
    arg = parse_arg(arg, quick=False, smoke=False)
    sweep = {
        "base": "configs/mqar.py",
        "grid": {":cell": FAMILIES, ":width": [64, 128, 256, 512],
                 ":T": [64, 128, 256]},
        # pairs follow T (configs/mqar.py: pairs = T/16), Zoology's (64, 4), (128, 8), (256, 16)
        "seeds": [0, 1, 2],
        "metrics": {"eval.token_accuracy": "max", "eval.token_accuracy:max": "max",
                    "eval.loss": "min"},
        "success": {"eval.token_accuracy": (">=", 0.9)},
        "plot": {"metric": "eval.token_accuracy", "panel": ":width"},
        "description": "MQAR accuracy on the query positions (chance 2/V).",
    }
    if arg.quick:
        sweep["base"] = "configs/mqar.py:quick,vocab=256"
        # Width outer, widest first: every family at 64 before any at 32.
        sweep["grid"] = {":width": [64, 32], ":cell": FAMILIES}
        sweep["seeds"] = [0]
    if arg.smoke:
        sweep["base"] = "configs/mqar.py:smoke"
        sweep["grid"] = {":cell": ["gru", "attention"]}
        sweep["seeds"] = [0]
    return sweep
