"""Sequence reversal (or copy, or filter) as seq2seq: "abcde" -> "edcba", with and without the
tricks.

Launch:

    rnnjax train --config configs/reverse.py --workdir runs/reverse
    rnnjax train --config configs/reverse.py:reverse_source --workdir runs/reverse_rs
    rnnjax train --config configs/reverse.py:attention=luong_general --workdir runs/reverse_attn
    rnnjax train --config configs/reverse.py:task=copy,reverse_source --workdir runs/copy_rs
    rnnjax train --config configs/reverse.py:task=filter --workdir runs/filter
    rnnjax decode --workdir runs/reverse --input "abcdefg"
    rnnjax train --config configs/reverse.py:smoke --workdir /tmp/smoke

Reversing a string fed forwards makes the first target token depend on the last
source token (a short dependency), while copying makes it depend on the first (a
long one); ``reverse_source`` (Sutskever et al. 2014) swaps the two. Attention
removes the difference: the decoder reads any source position directly.
``task=filter`` copies only the letters of the alphabet's first half ("agbjc" -> "abc"):
the output's length depends on the content (0 to the input's length), so the decoder
must decide where to stop; experiments/decoding.py uses it for the length penalty.

Expected (measured 2026-11-26 on the shared 2-core CPU, load 5-9; strings of 5-15
letters over 10 symbols, GRU 128, 2,000 steps, 512 eval strings; greedy / beam-4
exact match, wall time):

=====================================  ==============  =======
variant                                exact match     wall
=====================================  ==============  =======
reverse (default)                      0.881 / 0.885   59 s
reverse, reverse_source (= a copy)     0.715 / 0.756   74 s
copy                                   0.689 / 0.742   96 s
copy, reverse_source (= a reversal)    0.848 / 0.877   84 s
reverse, attention=luong_general       0.994 / 0.994   130 s
filter (*)                             0.980 / 0.982   82 s
filter, data.max_len=30 (*)            0.818 / 0.840   138 s
=====================================  ==============  =======

(*) measured 2026-11-29, load 6-7, trained with ``decode.beam_size=0`` (greedy only in
the periodic evaluations), beam-4 measured afterwards on the last checkpoint.

Variants (``:key=value,...``): task (reverse|copy|filter), reverse_source, attention
(none|bahdanau|luong_dot|luong_general), input_feeding, cell, bidirectional,
objective (teacher_forcing|scheduled_sampling|free_running), smoke.
"""

import ml_collections

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, task="reverse", reverse_source=False, attention="none",
                    input_feeding=False, cell="gru", bidirectional=False,
                    objective="teacher_forcing", smoke=False)
    c = base_config()
    c.task = "seq2seq"
    d = c.data
    d.name = arg.task
    d.alphabet_size = 10
    d.min_len = 5
    d.max_len = 15
    d.reverse_source = arg.reverse_source

    m = c.model
    m.cell = arg.cell
    m.hidden = 128
    m.embed_dim = 32
    m.bidirectional = arg.bidirectional
    m.decoder_layers = 0
    m.decoder_hidden = 128  # with a bidirectional encoder the bridge projects 256 -> 128
    m.share_embeddings = True
    m.bridge = "project"
    m.attention = arg.attention
    m.attention_features = 0
    m.input_feeding = arg.input_feeding

    o = c.objective = ml_collections.ConfigDict()
    o.mode = arg.objective
    o.schedule = "linear"  # scheduled_sampling only
    o.k = 1.0
    o.c = 1.0 / 4000  # eps falls from 1 to 0.5 over the 2,000 steps
    o.ratio = 1.0
    o.min_ratio = 0.0
    o.sample_tokens = False
    o.label_smoothing = 0.0

    dec = c.decode = ml_collections.ConfigDict()
    dec.beam_size = 4
    dec.length_penalty = "gnmt"
    dec.alpha = 0.6

    c.optim.lr = 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.05
    c.optim.clip = "global_norm"
    c.optim.clip_value = 1.0

    c.train.steps = 2000
    c.train.batch_size = 64
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_batch_size = 256
    c.train.eval_batches = 2
    c.train.log_every = 50
    if arg.smoke:
        smoke(c)
        d.min_len, d.max_len = 2, 5
        dec.beam_size = 2
    return c
