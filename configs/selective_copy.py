"""Selective copying (Gu & Dao 2023), the task of Feng et al. 2024, "Were RNNs All We Needed?".

Data tokens are scattered among noise; after the sequence, the model must emit them in order.
Because the spacing varies, a fixed-lag model cannot solve it: the cell must select.

Launch:

    rnnjax train --config configs/selective_copy.py:cell=min_gru,layers=2 --workdir runs/sc_mingru2
    rnnjax train --config configs/selective_copy.py:cell=gru --workdir runs/sc_gru
    rnnjax train --config configs/selective_copy.py:smoke --workdir /tmp/smoke
    rnnjax sweep experiments/min_rnn_selective_copy.py      # the paper's table, scaled down

Scale used here (to fit a 2-core CPU): 64 noise steps, 8 data tokens from an alphabet of 8,
hidden 64, 3,000 steps of batch 64 (the paper: 4,096 steps, 16 tokens, 400k steps).
The paper's finding: one minGRU/minLSTM layer cannot do it (it selects with input-only gates
but has no way to route by content), stacking layers solves it.

Expected, measured on this scale (seed 0, 3,000 steps, 2-core CPU, 3-6 minutes each under
load): token accuracy on the recall positions 0.44 for min_gru with 1 layer (the paper: about
37%), 0.77 for min_gru with 2 layers (still rising), 0.97 for a 1-layer GRU. Baseline 1/8 =
0.125 accuracy, log 8 = 2.08 nats. The LRU (``:cell=lru``; linear and time-invariant, its
recurrence cannot depend on the input at all), measured 2026-11-26 on a quiet machine: 0.31
with 1 layer (51 s), 0.49 with 2 (79 s), below minGRU at equal depth, as Gu & Dao 2023 find
for time-invariant state-space models on this task.

Variants: cell, layers, smoke.
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, cell="min_gru", layers=2, smoke=False)
    c = base_config()
    c.task = "tagging"
    c.data.name = "selective_copy"
    c.data.seq_len = 64  # noise region; total T = seq_len + num_tokens
    c.data.num_tokens = 8
    c.data.alphabet_size = 8
    c.data.loss_on = "mask"

    c.model.cell = arg.cell
    c.model.num_layers = arg.layers
    c.model.hidden = 64
    c.model.embed_dim = 16

    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.05
    c.optim.clip = "global_norm"
    c.optim.clip_value = 1.0

    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_batch_size = 256
    c.train.eval_batches = 2
    if arg.smoke:
        smoke(c)
        c.data.seq_len = 12
        c.data.num_tokens = 3
    return c
