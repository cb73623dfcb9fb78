"""Vanishing gradients: Elman (tanh) vs LSTM vs GRU on the adding problem as T grows.

Launch (full study: 3 cells x 4 lengths x 3 seeds = 36 runs; an unmeasured
estimate is 1-2 hours on a 2-core CPU with 2 workers, mostly the LSTM runs at
T=400):

    rnnjax sweep experiments/vanishing_gradients.py --workers 2
    rnnjax report experiments/vanishing_gradients.py

Quick variant (the README's table: T in {50, 100, 200}, 2 seeds, hidden 32,
batch 32, 1,500 steps; 18 runs, measured 3-8 minutes with 2 workers on a
shared 2-core CPU; see docs/vanishing_gradients.md):

    rnnjax sweep experiments/vanishing_gradients.py:quick --workers 2 --vmap-seeds
    rnnjax report experiments/vanishing_gradients.py:quick

Smoke (CI, seconds): ``rnnjax sweep experiments/vanishing_gradients.py --smoke``.

EXPECTED FINDING (Hochreiter & Schmidhuber 1997; Bengio, Simard & Frasconi 1994;
Le, Jaitly & Hinton 2015, Fig. 2): LSTM and GRU reach eval MSE <= 0.01 at T=100
(baseline 0.167, always predicting 1.0); the tanh RNN stays near the baseline
from T=200, because ``‖∂L/∂h_t‖`` shrinks geometrically with the distance to
the loss (see ``rnnjax diagnose``). With a fixed step budget the gated cells also
slow down as T grows: at T=400 they need more than the default 1,500 steps.
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, quick=False, smoke=False)
    sweep = {
        "base": "configs/adding.py",
        "grid": {":cell": ["rnn_tanh", "lstm", "gru"], ":T": [50, 100, 200, 400]},
        "seeds": [0, 1, 2],
        "metrics": {"eval.mse": "min",  # the final eval MSE
                    "eval.mse:min": "min"},  # the best eval MSE seen during training
        "success": {"eval.mse": ("<=", 0.01)},  # solved (the baseline is 0.167)
        "plot": {"metric": "eval.mse", "panel": ":T", "logy": True,
                 "hline": 1 / 6, "hline_label": "baseline 1/6"},
        "description": "Adding problem, eval MSE (baseline 1/6 = 0.167, solved <= 0.01).",
    }
    if arg.quick:
        sweep["grid"][":T"] = [50, 100, 200]
        sweep["seeds"] = [0, 1]
        sweep["fixed"] = {"model.hidden": 32, "train.batch_size": 32, "train.steps": 1500,
                          "train.eval_every": 100, "train.checkpoint_every": 500,
                          "train.eval_batch_size": 250}
    if arg.smoke:
        sweep["base"] = "configs/adding.py:smoke"
        sweep["grid"] = {":cell": ["rnn_tanh", "lstm"], ":T": [10]}
        sweep["seeds"] = [0]
        sweep["fixed"] = {}
    return sweep
