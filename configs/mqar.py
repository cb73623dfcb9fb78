"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology") with residual blocks.

Key-value pairs come first, then each key once more among random tokens; at each query the
model must output the key's value (rnnjax/data/mqar.py). The models are two pre-norm blocks
(rnnjax/nn/blocks.py) whose mixer is a recurrent cell or, as the reference, attention.

Launch:

    rnnjax train --config configs/mqar.py:cell=attention,width=64 --workdir runs/mqar_attn
    rnnjax train --config configs/mqar.py:T=256,pairs=16,cell=gated_deltanet --workdir runs/m
    rnnjax train --config configs/mqar.py:smoke --workdir /tmp/smoke
    rnnjax sweep experiments/mqar.py:quick --workers 2     # the CPU study, docs/studies/mqar.md

Full scale (Zoology): vocab 8192, (T, pairs) in {(64, 4), (128, 8), (256, 16)}, 100k train
and 3k test examples, batch 64, lr 1e-3 with warmup and cosine decay; sized for a GPU (each
run is hours on this 2-core CPU). ``:quick`` is the CPU scale of experiments/mqar.py:quick:
vocab 256, 20k train / 500 test examples, 400 steps of batch 32.

Expected (Zoology, Fig. 2): attention reaches ~100% accuracy on the query positions at every
setting and width; recurrent mixers need a state that grows with the number of pairs, so
their accuracy falls as pairs grow at a fixed width and rises with width. Chance is 2/V.
Measured at the quick scale (T=64, 4 pairs, V=256): see docs/studies/mqar.md.

Variants: T, pairs, cell, width, layers, vocab, quick, smoke.
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, T=64, pairs=0, cell="attention", width=64, layers=2, vocab=8192,
                    quick=False, smoke=False)
    c = base_config()
    c.task = "tagging"
    c.data.name = "mqar"
    c.data.seq_len = arg.T
    c.data.num_pairs = arg.pairs or arg.T // 16  # 0: Zoology's pairs for T (64->4 ... 256->16)
    c.data.vocab_size = arg.vocab  # keys 1..V/2-1, values V/2..V-1 (Zoology: 8192)
    c.data.power_a = 0.01  # Zoology's power law for the query gaps: queries come early
    c.data.num_train = 100_000  # Zoology's fixed train set
    c.data.num_test = 3_000  # Zoology's test set, another seed
    c.data.loss_on = "mask"  # the loss on the query positions only, as Zoology's -100 labels
    c.data.alphabet_size = 0  # unused by mqar (the tagging task reads it for copy tasks)

    m = c.model
    m.arch = "blocks"
    m.cell = arg.cell  # a registered cell or "attention"
    m.hidden = arg.width  # the residual width (Zoology sweeps 64..512)
    m.num_layers = arg.layers  # Zoology: 2 layers
    m.embed_dim = arg.width
    m.conv_kernel = 4  # the short conv the Zoology/Based/Mamba mixers use
    m.output_gate = True
    m.mlp_expansion = 2.0
    m.num_heads = 2 if arg.width < 64 else 4
    m.max_len = max(arg.T, 64)

    c.optim.lr = 1e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 500
    c.optim.end_lr_factor = 0.0
    c.optim.weight_decay = 0.1  # Zoology's AdamW weight decay
    c.optim.name = "adamw"

    c.train.steps = 20_000  # Zoology: 64 epochs of 100k examples at batch 64 is 100k steps
    c.train.batch_size = 64
    c.train.eval_every = 2_000
    c.train.checkpoint_every = 2_000
    c.train.eval_batch_size = 500
    c.train.log_every = 50
    if arg.quick:
        # CPU scale (experiments/mqar.py:quick): a small vocabulary makes the task learnable
        # in hundreds of steps; the pairs still have to be stored and read back.
        c.data.num_train = 20_000
        c.data.num_test = 500
        c.optim.lr = 3e-3
        c.optim.warmup_steps = 30
        c.train.steps = 400  # ~1-2 minutes a run on the shared 2-core CPU
        c.train.batch_size = 32
        c.train.eval_every = 200
        c.train.checkpoint_every = 200
        c.train.log_every = 25
        c.train.plots = False
        c.train.tensorboard = False
    if arg.smoke:
        smoke(c)
        c.data.seq_len = 16
        c.data.num_pairs = 2
        c.data.vocab_size = 32
        c.data.num_train = 64
        c.data.num_test = 16
        c.model.num_heads = 2
        c.model.max_len = 16
        c.optim.warmup_steps = 1
    return c
