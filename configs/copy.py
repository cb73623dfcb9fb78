"""The copy (memory) task (Arjovsky, Shah & Bengio 2016): recall 10 symbols after a delay.

Launch:

    rnnjax train --config configs/copy.py --workdir runs/copy
    rnnjax train --config configs/copy.py:cell=gru,delay=50 --workdir runs/copy_gru
    rnnjax train --config configs/copy.py:smoke --workdir /tmp/smoke

Expected: a GRU with delay=20 recalls the symbols (token accuracy >= 0.99 on the
recall positions, baseline 1/8 = 0.125, loss baseline log 8 = 2.08 nats) within
3,000 steps, about 4 minutes on a 2-core CPU. LSTMs take longer at this delay;
tanh RNNs stay at the baseline for delays >= 50.

Variants: cell, delay, smoke.
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, cell="gru", delay=20, smoke=False)
    c = base_config()
    c.task = "tagging"
    c.data.name = "copy"
    c.data.num_symbols = 10  # as in the paper
    c.data.delay = arg.delay
    c.data.alphabet_size = 8  # as in the paper
    c.data.loss_on = "mask"  # train on the recall positions only (faster to learn)

    c.model.cell = arg.cell
    c.model.hidden = 128
    c.model.embed_dim = 16

    c.optim.lr = 2e-3
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
        c.data.delay = 5
    return c
