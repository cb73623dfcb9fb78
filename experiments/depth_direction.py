"""Depth and direction: 1 vs 2 vs 3 layers, unidirectional vs bidirectional LSTMs.

Setting: ``configs/temporal_order.py`` (Hochreiter & Schmidhuber's task 6a at
T=100: classify the order of two X/Y symbols placed at 10-20% and 50-60% of the
sequence among distractors; chance 0.25). The model pools the last state (a
bidirectional stack concatenates the forward direction's last state with the
backward direction's state at t=0).

Launch (3 depths x 2 directions x 3 seeds = 18 runs; not timed; its 12-run ``:quick``
variant took 31 minutes on the shared 2-core CPU with 2 workers, so expect about 45-60):

    rnnjax sweep experiments/depth_direction.py --workers 2 --vmap-seeds
    rnnjax report experiments/depth_direction.py

``:quick`` (2 seeds, 1,500 steps; 12 runs) is the scale run on the 2-core CPU, see
docs/studies/depth_direction.md. ``:quick,width`` runs one unidirectional layer of 128 or
192 units instead (the cells of 2 or 3 layers of 64; 4 runs, 4 min 31 s with 2 workers).
Smoke (CI): ``rnnjax sweep experiments/depth_direction.py --smoke``.

EXPECTED FINDING: the forward direction must carry the first symbol 80-90 steps
to the end, the backward direction only 10-20 steps to t=0 (Schuster & Paliwal
1997: a second direction shortens the time lags a recurrent net must bridge),
so bidirectional models solve the task (accuracy >= 0.99) in fewer steps (a
higher ``eval.accuracy:mean``, the area under the eval curve) and more reliably
across seeds. Extra depth does not shorten any time lag: on this
single-decision task 2-3 layers give no gain over 1 and train more slowly at
the start (deeper stacks pay off on tasks with more structure per step: Graves,
Mohamed & Hinton 2013; Pascanu et al. 2014).

Pilot runs (seed 0, one run each, not this sweep): with 32 units and lr 3e-3 the
unidirectional LSTM stayed at chance for 2,000 steps while the bidirectional one
reached accuracy 1.0 by step 250; with the config's 64 units and lr 1e-3 the
unidirectional one reached 0.995 at step 750.

MEASURED (``:quick``, 2026-11-29, 2 seeds; docs/studies/depth_direction.md): direction
reproduced (1 bidirectional layer: mean eval accuracy over training 0.964, 2/2 solved; 1
unidirectional layer: 0.492, 1/2); depth did not: unidirectional stacks learned faster with
depth (0.492, 0.875, 0.996 for 1, 2, 3 layers). ``:quick,width`` (2026-11-30): one layer
of 128 units learned no better than 64 (0.492, 1/2); 192 units solved both seeds (0.878),
as 2 layers of 64 did, but the 3-layer stack with the same 192 cells learned sooner (0.996).
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, cell="lstm", T=100, quick=False, smoke=False, width=False)
    sweep = {
        "base": f"configs/temporal_order.py:cell={arg.cell},T={arg.T}",
        "grid": {":layers": [1, 2, 3], ":bidirectional": [False, True]},
        "seeds": [0, 1, 2],
        "metrics": {"eval.accuracy": "max",
                    # mean over the eval curve (every 100 steps): higher = learned sooner
                    "eval.accuracy:mean": "max",
                    "eval.loss": "min"},
        "fixed": {"train.eval_every": 100},
        "success": {"eval.accuracy": (">=", 0.99)},
        "plot": {"metric": "eval.accuracy", "panel": ":bidirectional"},
        "description": "Temporal order (4 classes, chance 0.25): depth and direction.",
    }
    if arg.quick:  # the CPU scale of docs/studies/depth_direction.md: 2 seeds, 1,500 steps
        sweep["seeds"] = [0, 1]
        sweep["fixed"] = {**sweep["fixed"], "train.steps": 1500}
    if arg.width:  # one unidirectional layer with the cells of 2 or 3 layers of 64
        sweep["grid"] = {"model.hidden": [128, 192]}
        sweep["fixed"] = {**sweep["fixed"], "model.num_layers": 1,
                          "model.bidirectional": False}
        del sweep["plot"]
    if arg.smoke:
        sweep["base"] = f"configs/temporal_order.py:cell={arg.cell},smoke"
        sweep["grid"] = {":layers": [1, 2], ":bidirectional": [False, True]}
        sweep["seeds"] = [0]
        sweep["fixed"] = {}
    return sweep
