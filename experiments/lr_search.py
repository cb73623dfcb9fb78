"""Learning rate and width by Optuna (TPE + median pruning) on the adding problem.

Setting: an LSTM on the adding problem at T=50, 600 steps of 32, evaluated every
100 steps. TPE chooses ``optim.lr`` (log-uniform 3e-4 .. 3e-2) and ``model.hidden``
(16, 32, 64); the median pruner stops a trial whose eval MSE at a step is worse than
the median of the earlier trials at that step (after 5 complete trials and 200
steps), with SIGTERM: the trainer saves and exits, and the trial is PRUNED.

Launch (24 trials, 2 at a time; measured 2 min 24 s and 2 min 28 s on the idle 2-core
CPU, 2026-11-30):

    rnnjax sweep experiments/lr_search.py --workers 2
    rnnjax report experiments/lr_search.py

``:warmup=N`` sets the pruner's ``n_warmup_steps`` (default 200; 400 prunes only past the
adding problem's plateau, docs/studies/lr_search.md). Smoke (CI): ``rnnjax sweep
experiments/lr_search.py --smoke`` (3 trials of 4 steps).
Needs ``pip install 'rnnjax[cluster]'`` (optuna). The storage is
``runs/lr_search/optuna.db`` (SQLite): re-running resumes the search.

EXPECTED FINDING: the learning rate matters far more than the width here: Adam on
the adding problem leaves the 0.167 plateau only for lr around 1e-3 .. 1e-2 in 600
steps (configs/adding.py: 3e-3 at 1,500 steps), so the parameter importance should give
``optim.lr`` most of it and the best trials should sit near lr 3e-3 .. 1e-2 with any
width.

MEASURED (2026-11-30, two runs from scratch; docs/studies/lr_search.md): the learning
rate decides (PED-ANOVA importance 0.87 and 0.90 for ``optim.lr``; every complete trial
with lr >= 0.0049 solved the task at any width; of those with lr <= 0.0041, one did),
but the best rates are higher than expected: the five best trials have lr
0.014-0.029, width 32, eval MSE 0.00085-0.0011. The median pruner stopped trials still
on the plateau at step 200, at least two of which would have solved the task.
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, smoke=False, warmup=200)
    sweep = {
        "base": "configs/adding.py:T=50",
        "optuna": {
            "n_trials": 24,
            "sampler": "tpe",
            "pruner": "median",
            "pruner_kwargs": {"n_startup_trials": 5, "n_warmup_steps": arg.warmup},
            "space": {"optim.lr": ("loguniform", 3e-4, 3e-2),
                      "model.hidden": ("choice", [16, 32, 64])},
            "metric": "eval.mse",
            "direction": "minimize",
        },
        "fixed": {"train.steps": 600, "train.eval_every": 100, "train.batch_size": 32,
                  "optim.warmup_steps": 50},
        "seeds": [0],
        "metrics": {"eval.mse": "min"},
        "success": {"eval.mse": ("<=", 0.01)},
    }
    if arg.smoke:
        sweep["base"] = "configs/adding.py:T=50,smoke"
        sweep["optuna"]["n_trials"] = 3
        sweep["optuna"]["space"]["model.hidden"] = ("choice", [8, 16])
        sweep["fixed"] = {"data.seq_len": 6}
    return sweep
