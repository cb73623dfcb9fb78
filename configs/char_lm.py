"""Character-level language model on any UTF-8 text file (Karpathy's char-rnn setting).

Launch:

    rnnjax train --config configs/char_lm.py --config.data.path=input.txt --workdir runs/char_lm
    rnnjax train --config configs/char_lm.py:stateful --config.data.path=input.txt \
        --workdir runs/lm_tbptt
    rnnjax sample --workdir runs/char_lm --prime "ROMEO:" --temperature 0.8
    rnnjax train --config configs/char_lm.py:smoke --workdir /tmp/smoke

The default path, ``builtin:sonnets``, is seven Shakespeare sonnets (4 kB) shipped with
rnnjax: a model memorises it, so use it to check the pipeline, not to measure. For
tiny-shakespeare, ``python -c "from rnnjax.data.download import fetch;
print(fetch('tiny_shakespeare'))"`` downloads it (or says where to put it by hand).

Expected on tiny-shakespeare (1.1 MB), 2-layer LSTM 256, 5,000 steps: about
1.55 bits/char on validation, about 25 minutes on a 2-core CPU.

Variants: cell, stateful (truncated BPTT with the carry flowing across batches),
smoke.
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, cell="lstm", stateful=False, smoke=False)
    c = base_config()
    c.task = "lm"
    c.data.path = "builtin:sonnets"
    c.data.level = "char"
    c.data.lowercase = False
    c.data.val_fraction = 0.1  # the last 10% of the file
    c.data.seq_len = 100  # BPTT window, as in char-rnn
    c.data.stateful = arg.stateful
    c.data.min_freq = 1
    c.data.max_vocab = 0  # 0 = no limit
    # Batches of train-text windows also evaluated (eval mode) for train_* metrics and the
    # train-validation gap; 0 = validation only.
    c.data.train_eval_batches = 0

    c.model.cell = arg.cell
    c.model.hidden = 256
    c.model.num_layers = 2
    c.model.dropout = 0.2  # between layers and before the softmax
    c.model.embed_dim = 64

    c.optim.lr = 2e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 200
    c.optim.end_lr_factor = 0.1
    c.optim.clip = "global_norm"
    c.optim.clip_value = 5.0  # char-rnn's clip

    c.train.steps = 5000
    c.train.batch_size = 32
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_batch_size = 64
    c.train.eval_batches = 4
    if arg.smoke:
        smoke(c)
        c.data.seq_len = 16
        c.model.num_layers = 1
    return c
