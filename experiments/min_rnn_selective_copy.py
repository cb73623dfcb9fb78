"""minGRU / minLSTM (1-3 layers) vs GRU / LSTM on selective copying (Feng et al. 2024, Table 1),
with the LRU (Orvieto et al. 2023) as the time-invariant contrast.

Launch (full study: 5 cells x 3 depths x 3 seeds = 45 runs of configs/selective_copy.py;
an unmeasured estimate is 2-3 hours on a 2-core CPU with 2 workers):

    rnnjax sweep experiments/min_rnn_selective_copy.py --workers 2 --vmap-seeds
    rnnjax report experiments/min_rnn_selective_copy.py

Smoke (CI, seconds): ``rnnjax sweep experiments/min_rnn_selective_copy.py --smoke``.

Scale: the paper uses sequences of 4,096 steps with 16 data tokens and 400k steps; here
64 noise steps, 8 tokens from an alphabet of 8, hidden 64 and 3,000 steps (see
configs/selective_copy.py), so the numbers are not the paper's but the ordering should be.

EXPECTED FINDING (Feng et al. 2024, Table 1: roughly 37% accuracy for one layer of minGRU or
minLSTM, rising to above 85% with two and near 99% with three): a single min layer cannot
solve the task because its gates see only the current input; stacking layers lets later
layers gate on content. Classic GRU/LSTM, whose gates see h_{t-1}, solve it with one layer.
The LRU's recurrence is linear and time-invariant (no gate at all), so at equal depth it
should stay below minGRU (Gu & Dao 2023: time-invariant SSMs fail selective copying).
Measured single runs at this scale (seed 0): min_gru 1 layer 0.44, 2 layers 0.77;
lru 1 layer 0.31, 2 layers 0.49; gru 1 layer 0.97 token accuracy on the recall positions
(baseline 1/8).
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, smoke=False)
    sweep = {
        "base": "configs/selective_copy.py",
        "grid": {":cell": ["min_gru", "min_lstm", "lru", "gru", "lstm"], ":layers": [1, 2, 3]},
        "seeds": [0, 1, 2],
        "metrics": {"eval.token_accuracy": "max", "eval.sequence_accuracy": "max",
                    "eval.loss": "min"},
        "success": {"eval.token_accuracy": (">=", 0.9)},
        "plot": {"metric": "eval.token_accuracy", "panel": ":layers",
                 "hline": 1 / 8, "hline_label": "chance 1/8"},
        "description": "Selective copying, token accuracy on the recall positions "
                       "(chance 1/8).",
    }
    if arg.smoke:
        sweep["base"] = "configs/selective_copy.py:smoke"
        sweep["grid"] = {":cell": ["min_gru", "gru"], ":layers": [1, 2]}
        sweep["seeds"] = [0]
    return sweep
