"""minGRU / minLSTM (1-3 layers) vs GRU / LSTM on selective copying (Feng et al. 2024, Table 1),
with the LRU (Orvieto et al. 2023) as the time-invariant contrast.

Launch (full study: 5 cells x 3 depths x 3 seeds = 45 runs of configs/selective_copy.py;
measured: 98 minutes on the 2-core CPU with 2 workers and --vmap-seeds, shared with other
jobs; the table is in docs/studies/min_rnn_selective_copy.md):

    rnnjax sweep experiments/min_rnn_selective_copy.py --workers 2 --vmap-seeds
    rnnjax report experiments/min_rnn_selective_copy.py

Smoke (CI, seconds): ``rnnjax sweep experiments/min_rnn_selective_copy.py --smoke``.

``:families=modern`` adds sLSTM, mLSTM, RG-LRU, Mamba-2 and Gated DeltaNet (the same stacked
layers, each cell with its default options): 10 cells x 3 depths x 3 seeds = 90 runs, not
run yet on this CPU. ``:families=new`` has only those five; ``:quick`` keeps 1-2 layers and
seed 0 (``:families=new,quick``: 10 runs).

Scale: the paper uses sequences of 4,096 steps with 16 data tokens and 400k steps; here
64 noise steps, 8 tokens from an alphabet of 8, hidden 64 and 3,000 steps (see
configs/selective_copy.py), so the numbers are not the paper's but the ordering should be.

EXPECTED FINDING (Feng et al. 2024, Table 1: roughly 37% accuracy for one layer of minGRU or
minLSTM, rising to above 85% with two and near 99% with three): a single min layer cannot
solve the task because its gates see only the current input; stacking layers lets later
layers gate on content. Classic GRU/LSTM, whose gates see h_{t-1}, solve it with one layer.
The LRU's recurrence is linear and time-invariant (no gate at all), so at equal depth it
should stay below minGRU (Gu & Dao 2023: time-invariant SSMs fail selective copying).
MEASURED (the full study, 3 seeds, 2026-11-29; docs/studies/min_rnn_selective_copy.md): token
accuracy on the recall positions (chance 1/8) for 1 / 2 / 3 layers: min_gru 0.42 / 0.82 /
0.97, min_lstm 0.41 / 0.82 / 0.96, lru 0.31 / 0.50 / 0.62, gru 0.96 / 1.00 / 1.00, lstm
0.87 / 0.99 / 1.00. Depth rescues the min cells and the LRU stays below them, as expected; a
1-layer LSTM was still rising at 0.87 (below the 0.9 success line) after 3,000 steps.
"""

from rnnjax.configlib import parse_arg

CELLS = ["min_gru", "min_lstm", "lru", "gru", "lstm"]
#: ``:families=modern`` adds the gated and matrix-state families of issue 11 (input-dependent
#: gates like minGRU's, so expected to need depth less than the LRU does; not run yet).
MODERN = ["slstm", "mlstm", "rglru", "mamba2", "gated_deltanet"]


def get_sweep(arg=None):
    arg = parse_arg(arg, families="min", quick=False, smoke=False)
    families = {"min": CELLS, "modern": CELLS + MODERN, "new": MODERN}
    if arg.families not in families:
        raise ValueError(f"min_rnn_selective_copy: families must be 'min' (the paper's cells), "
                         f"'modern' (those plus {MODERN}) or 'new' (only {MODERN}), got "
                         f"{arg.families!r}")
    sweep = {
        "base": "configs/selective_copy.py",
        "grid": {":cell": families[arg.families], ":layers": [1, 2, 3]},
        "seeds": [0, 1, 2],
        "metrics": {"eval.token_accuracy": "max", "eval.sequence_accuracy": "max",
                    "eval.loss": "min"},
        "success": {"eval.token_accuracy": (">=", 0.9)},
        "plot": {"metric": "eval.token_accuracy", "panel": ":layers",
                 "hline": 1 / 8, "hline_label": "chance 1/8"},
        "description": "Selective copying, token accuracy on the recall positions "
                       "(chance 1/8).",
    }
    if arg.quick:  # one seed, 1-2 layers: the CPU scale of the newer families' run
        sweep["grid"][":layers"] = [1, 2]
        sweep["seeds"] = [0]
    if arg.smoke:
        sweep["base"] = "configs/selective_copy.py:smoke"
        smoke_cells = {"min": ["min_gru", "gru"], "modern": ["min_gru", "gru", "mamba2"],
                       "new": ["mamba2"]}
        sweep["grid"] = {":cell": smoke_cells[arg.families], ":layers": [1, 2]}
        sweep["seeds"] = [0]
    return sweep
