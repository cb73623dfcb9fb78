"""The config sections every experiment shares, with their defaults and comments.

Config files (``configs/*.py``) start from :func:`base_config` and change what
their experiment needs, so every config has the same keys and a CLI override
such as ``--config.optim.clip=value`` works everywhere.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init uses seed, dropout seed+1, data order seed
    c.task = ""  # module name in rnnjax/tasks/ (regression, classification, lm, tagging, seq2seq)

    c.data = ml_collections.ConfigDict()  # task-specific; see the task's docstring

    m = c.model = ml_collections.ConfigDict()
    m.cell = "lstm"  # lstm | gru | rnn_tanh | rnn_relu | min_gru | min_lstm
    m.hidden = 128  # H per direction
    m.num_layers = 1
    m.bidirectional = False
    m.dropout = 0.0  # between recurrent layers and in the head
    m.unroll = 1  # lax.scan unroll; >1 never helped on CPU (docs/performance.md §5)
    # The chosen cell's options (forget_bias, reset_before, scan_mode, r_min ...): the one
    # config dict that takes new keys on the command line, --config.model.cell_kwargs.r_min=0.9.
    m.cell_kwargs = ml_collections.ConfigDict()
    m.embed_dim = 64  # for token inputs
    m.pooling = "last"  # last | mean | max (sequence -> vector models)
    m.head_hidden = ()  # MLP head hidden sizes
    m.freeze_embedding = False
    m.tie_embeddings = False  # LM: output layer shares the embedding table

    o = c.optim = ml_collections.ConfigDict()
    o.name = "adam"  # any optax optimiser
    o.lr = 1e-3
    o.schedule = "constant"  # constant | warmup_cosine | exponential
    o.warmup_steps = 0
    o.end_lr_factor = 0.0  # warmup_cosine: final lr = lr * end_lr_factor
    o.decay_rate = 0.5  # exponential: lr *= decay_rate every decay_steps
    o.decay_steps = 1000
    o.weight_decay = 0.0  # masked to matrices
    o.clip = "global_norm"  # none | global_norm | value | adaptive
    o.clip_value = 1.0  # max norm / max |g| / adaptive ratio
    o.kwargs = ml_collections.ConfigDict()  # extra optimiser arguments (b1, momentum, ...)

    t = c.train = ml_collections.ConfigDict()
    t.steps = 1000
    t.batch_size = 64
    t.eval_every = 250
    t.eval_batch_size = 256
    t.eval_batches = 4  # synthetic tasks: size of the fixed eval set, in batches
    t.checkpoint_every = 250
    t.keep_checkpoints = 2  # the last N, plus the best by the task's metric
    t.log_every = 10  # train metrics to metrics.jsonl / TensorBoard
    t.tensorboard = True
    t.plots = True  # PNG curves in workdir/plots at the end
    t.diagnostics_every = 0  # gradient-flow diagnostics (0 = off)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to a CI-sized run: a few steps of a tiny model."""
    c.model.hidden = min(c.model.hidden, 16)
    c.model.embed_dim = min(c.model.embed_dim, 8)
    c.model.head_hidden = tuple(min(h, 16) for h in c.model.head_hidden)
    c.train.steps = 4
    c.train.batch_size = 8
    c.train.eval_every = 2
    c.train.eval_batch_size = 8
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.train.plots = False
    c.train.tensorboard = False
    return c
