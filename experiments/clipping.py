"""Gradient clipping: none vs global-norm vs per-element, where gradients explode.

Setting: a ReLU Elman RNN (orthogonal recurrent init, spectral radius 1) on the
adding problem at T=30, trained by plain SGD at two learning rates, 1,500 steps
of 32. ReLU units do not saturate, so nothing bounds ``∏ W_hh^T diag(relu')``:
once training pushes the recurrent spectral radius above 1, the gradient norm
grows geometrically with T, and one large step throws the weights into a region
where the loss is NaN.

Launch (7 clipping settings x 2 learning rates x 3 seeds = 42 runs; measured: 11 minutes
on the shared 2-core CPU with 2 workers, load average 4-7):

    rnnjax sweep experiments/clipping.py --workers 2
    rnnjax report experiments/clipping.py

Smoke (CI): ``rnnjax sweep experiments/clipping.py --smoke``.

The report's ``train.grad_norm:max`` column is the largest gradient norm logged
(every step: ``train.log_every=1``) before clipping, i.e. the explosion spikes;
``success`` is the fraction of seeds whose final eval MSE is <= 0.1 (baseline
0.167); a run whose loss became NaN is a failed trial (``failed.json`` names
the step) and counts as no success.

EXPECTED FINDING (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training
recurrent neural networks", Sec. 3.2 and 5): without clipping, SGD at the large
learning rate (0.2) meets gradient-norm spikes orders of magnitude above the
typical norm and diverges (NaN) on most seeds, while at 0.05 it survives;
clipping the global norm (threshold 1 or 10) removes the divergence at both
learning rates and the runs learn; per-element clipping (``value``) also stops
the divergence but changes the gradient's direction, and with a small threshold
(0.01) it slows learning. In our own pilot runs (seed 0): no clipping at lr 0.2
diverged with a spike of 9e4 (tanh: 2e19), global-norm clipping at 1 reached
MSE 0.057.

MEASURED (2026-11-29, 3 seeds; table and plot in docs/studies/clipping.md): without
clipping at lr 0.2, 3/3 seeds went non-finite; global-norm clipping at 0.3 or 1 kept every
run finite and solved 2/3 at lr 0.2; global norm 10 kept them finite but solved none. Not as
expected: per-element clipping at 0.01 was the best setting at lr 0.05 (MSE 0.068, 3/3),
acting as sign-SGD, while per-element 0.1 and 1 were the worst.
"""

from rnnjax.configlib import parse_arg

CLIPS = [
    {"optim.clip": "none"},
    {"optim.clip": "global_norm", "optim.clip_value": 0.3},
    {"optim.clip": "global_norm", "optim.clip_value": 1.0},
    {"optim.clip": "global_norm", "optim.clip_value": 10.0},
    {"optim.clip": "value", "optim.clip_value": 0.01},
    {"optim.clip": "value", "optim.clip_value": 0.1},
    {"optim.clip": "value", "optim.clip_value": 1.0},
]


def get_sweep(arg=None):
    arg = parse_arg(arg, smoke=False)
    lrs = [0.05, 0.2]
    sweep = {
        "base": "configs/adding.py:T=30,cell=rnn_relu",
        # Explicit list: "none" has no threshold, so a grid would repeat it.
        "trials": [{"optim.lr": lr, **c} for lr in lrs for c in CLIPS],
        "fixed": {"optim.name": "sgd", "optim.schedule": "constant", "optim.warmup_steps": 0,
                  "model.hidden": 32, "train.batch_size": 32, "train.steps": 1500,
                  "train.log_every": 1,  # every step: the spikes are single steps
                  "train.eval_every": 100, "train.checkpoint_every": 500,
                  "train.eval_batch_size": 250},
        "seeds": [0, 1, 2],
        "metrics": {"eval.mse": "min", "train.grad_norm:max": "min",
                    "train.grad_norm:mean": "min"},
        "success": {"eval.mse": ("<=", 0.1)},
        "plot": {"metric": "train.grad_norm", "panel": "optim.lr", "logy": True},
        "description": "Adding T=30, ReLU RNN, SGD: clipping vs gradient explosion.",
    }
    if arg.smoke:
        sweep["base"] = "configs/adding.py:smoke,T=8,cell=rnn_relu"
        sweep["trials"] = [{"optim.lr": 0.2, **c} for c in (CLIPS[0], CLIPS[2], CLIPS[5])]
        sweep["fixed"] = {"optim.name": "sgd", "optim.schedule": "constant",
                          "optim.warmup_steps": 0}
        sweep["seeds"] = [0]
    return sweep
