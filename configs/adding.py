"""The adding problem (Hochreiter & Schmidhuber 1997): sum the two marked values.

Launch (the README's default job):

    rnnjax train --config configs/adding.py --workdir runs/adding
    rnnjax train --config configs/adding.py:cell=gru,T=200 --workdir runs/adding_gru
    rnnjax train --config configs/adding.py:cell=lru,layers=2 --workdir runs/adding_lru
    rnnjax train --config configs/adding.py:smoke --workdir /tmp/smoke

Expected: an LSTM at T=100 reaches eval MSE <= 0.01 (baseline 0.167, predicting
1.0) in 1,500 steps, about 3 minutes on a 2-core CPU. A tanh RNN stays near the
baseline from T=200 (vanishing gradients).

The LRU (Orvieto et al. 2023) needs two layers (measured 2026-11-26, 2-core CPU, seed 0,
T=100, 1,500 steps): ``:cell=lru,layers=2`` reaches eval MSE 0.0049 in about 1 minute
(0.0048 with ``--config.model.cell_kwargs.r_min=0.9 --config.model.cell_kwargs.r_max=0.999``,
the paper's long-range ring), while one layer stays at the baseline (0.162): its output is
a pointwise function of a linear summary of the inputs, which cannot hold the products
value x marker that the sum needs.

Variants (``:key=value,...``): cell (lstm|gru|rnn_tanh|rnn_relu|min_gru|min_lstm|lru),
layers (stacked recurrent layers), T (sequence length), smoke (tiny, 4 steps).
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, cell="lstm", T=100, layers=1, smoke=False)
    c = base_config()
    c.task = "regression"
    c.data.name = "adding"
    c.data.seq_len = arg.T

    c.model.cell = arg.cell
    c.model.num_layers = arg.layers
    c.model.hidden = 64  # enough for the task; larger only slows a CPU run
    c.model.pooling = "last"  # the answer must be carried to the last step

    c.optim.lr = 3e-3  # Adam at 1e-3 takes ~2x the steps to leave the plateau
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.05
    c.optim.clip = "global_norm"
    c.optim.clip_value = 1.0  # LSTM gradients spike when it first finds the markers

    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.eval_batch_size = 500
    c.train.eval_batches = 2  # 1,000 fresh sequences
    if arg.smoke:
        smoke(c)
    return c
