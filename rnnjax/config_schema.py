"""The config schema: the sections every experiment shares, their defaults and comments,
and the checks every run makes of them.

Config files (``configs/*.py``) start from :func:`base_config` and change what
their experiment needs, so every config has the same keys and a CLI override
such as ``--config.optim.clip=value`` works everywhere. :func:`validate` checks the
counts and sizes before anything is built. It sits beside :mod:`rnnjax.configlib`
(which loads configs) and imports nothing else of rnnjax.
"""

from __future__ import annotations

import math

import ml_collections

#: model.arch values: the make_rnn stack or the residual blocks of rnnjax/nn/blocks.py.
ARCHS = ("rnn", "blocks")
#: model.dtype values, the compute dtype (rnnjax.models.common.DTYPES maps them to dtypes).
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random stream derives from it: rnnjax.data.streams.SEED_STREAMS
    c.task = ""  # module name in rnnjax/tasks/ (regression, classification, lm, tagging, seq2seq)

    c.data = ml_collections.ConfigDict()  # task-specific; see the task's docstring
    # Pack short sequences into rows of data.max_len (classification) or data.seq_len (lm,
    # char level: lines) with segment_ids, first-fit decreasing (rnnjax/data/packing.py);
    # the recurrent layers restart at every segment. Tasks without packing ignore it.
    c.data.pack = False

    m = c.model = ml_collections.ConfigDict()
    # lstm | gru | rnn_tanh | rnn_relu | min_gru | min_lstm | lru | slstm | mlstm | rglru |
    # mamba2 | gated_deltanet (rnnjax.nn.known_cells()); with arch="blocks" also "attention"
    m.cell = "lstm"
    m.hidden = 128  # H per direction
    m.num_layers = 1
    m.bidirectional = False
    m.dropout = 0.0  # between recurrent layers and in the head
    m.unroll = 1  # lax.scan unroll; >1 never helped on CPU (docs/performance.md §5)
    # The chosen cell's options (forget_bias, reset_before, scan_mode, r_min ...): the one
    # config dict that takes new keys on the command line, --config.model.cell_kwargs.r_min=0.9.
    m.cell_kwargs = ml_collections.ConfigDict()
    # Mixed precision, Flax's names: the compute dtype, float32 | bfloat16. Parameters stay
    # float32 (Flax's param_dtype; the optimiser updates them in float32), and so do the
    # recurrent carries, the sums and normalisers inside the cells, and the logits/loss.
    # bfloat16 runs the embeddings, projections, recurrent matmuls, gate maths and heads in
    # bfloat16. Not faster on a CPU (docs/performance.md §17); model.arch="rnn" only.
    m.dtype = "float32"
    m.embed_dim = 64  # for token inputs
    m.pooling = "last"  # last | mean | max (sequence -> vector models)
    m.head_hidden = ()  # MLP head hidden sizes
    m.freeze_embedding = False
    m.tie_embeddings = False  # LM: output layer shares the embedding table
    # "rnn": embedding -> make_rnn stack (the classic models). "blocks": pre-norm residual
    # blocks (rnnjax/nn/blocks.py), x + mixer(norm(x)) then x + mlp(norm(x)), where the
    # mixer is model.cell run as a recurrent layer, or "attention"; hidden is the residual
    # width. LM/tagger and classifier/regressor; seq2seq keeps "rnn".
    m.arch = "rnn"
    m.conv_kernel = 4  # blocks: short causal depthwise conv before the cell (0 = off), as Mamba
    m.output_gate = True  # blocks: cell output * silu(W_g x), as Mamba, Griffin, GDN
    m.mlp_expansion = 2.0  # blocks: SwiGLU hidden width / hidden (0 = no MLP)
    m.num_heads = 4  # blocks with cell="attention": heads (hidden / num_heads even, RoPE)
    m.max_len = 1024  # blocks with attention: KV-cache positions for decoding (prompt + output)
    # LM/tagger: drop whole words (rows of the embedding table, one mask per batch, kept rows
    # scaled by 1/(1-p); Merity et al. 2017). AWD-LSTM uses 0.1.
    m.embed_dropout = 0.0
    # LM/tagger: activation regularisation, ar_alpha * mean(h_dropped ** 2) over the last
    # layer's outputs, and temporal AR, tar_beta * mean((h_t - h_{t-1}) ** 2) over its
    # undropped outputs, added to the training loss (AWD-LSTM: alpha 2, beta 1). 0 = off.
    m.ar_alpha = 0.0
    m.tar_beta = 0.0

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
    # Batches a background thread prepares (drawn, stacked, transferred) ahead of the
    # step that uses them; 0 draws each batch in the loop. Resume stays exact either way.
    t.prefetch = 2
    return c



#: Config keys that change only how a trained run is evaluated, never its weights: the
#: decoder's settings (``decode.*``: beam size, length penalty and alpha, read by the
#: seq2seq task's eval step alone) and the eval set's batching and size. ``rnnjax eval``
#: takes overrides of these and nothing else, and a sweep's ``eval_grid`` axes must be
#: among them (both through :func:`check_eval_only`). A section name covers its keys.
EVAL_ONLY_KEYS = ("decode", "train.eval_batch_size", "train.eval_batches")


def is_eval_only(key: str) -> bool:
    """True if the dotted config ``key`` changes only evaluation (:data:`EVAL_ONLY_KEYS`)."""
    return any(key == k or key.startswith(k + ".") for k in EVAL_ONLY_KEYS)


def check_eval_only(keys, where: str, fix: str) -> None:
    """Raises ValueError naming the ``keys`` that would change training, not only evaluation.

    ``where`` says what was given (``"rnnjax eval --config.KEY"``), ``fix`` what to do
    instead; the message lists the keys that are evaluation-only.
    """
    bad = [k for k in keys if not is_eval_only(str(k))]
    if bad:
        known = ", ".join(k if "." in k else f"{k}.*" for k in EVAL_ONLY_KEYS)
        raise ValueError(f"{where}: {', '.join(map(repr, bad))} would change the trained run, "
                         f"not only its evaluation (evaluation-only keys: {known}). {fix}")

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


#: Counts and sizes every run checks before it builds anything: (key, lowest allowed
#: value, what the value is). A key a config does not have is skipped.
_BOUNDS: tuple[tuple[str, float, str], ...] = (
    ("train.steps", 1, "the number of training steps"),
    ("train.batch_size", 1, "the training batch size"),
    ("train.eval_every", 1, "steps between evaluations"),
    ("train.eval_batch_size", 1, "the evaluation batch size"),
    ("train.eval_batches", 1, "the number of synthetic eval batches"),
    ("train.checkpoint_every", 1, "steps between checkpoints"),
    ("train.keep_checkpoints", 1, "how many recent checkpoints to keep"),
    ("train.log_every", 1, "steps between logged train metrics"),
    ("train.diagnostics_every", 0, "steps between diagnostics (0 = off)"),
    ("train.prefetch", 0, "batches prepared ahead (0 = none)"),
    ("model.hidden", 1, "the hidden size H"),
    ("model.num_layers", 1, "the number of recurrent layers"),
    ("model.embed_dim", 1, "the embedding size"),
    ("model.unroll", 1, "the lax.scan unroll factor"),
    ("model.conv_kernel", 0, "the short-conv taps (0 = off)"),
    ("model.num_heads", 1, "the attention heads"),
    ("model.max_len", 1, "the KV-cache length"),
    ("optim.warmup_steps", 0, "the warmup steps"),
    ("optim.decay_steps", 1, "steps per exponential decay"),
    ("data.seq_len", 1, "the sequence length"),
    ("data.delay", 0, "the copy delay"),
    ("data.num_samples", 1, "the series length"),
    ("data.window", 1, "the input window"),
    ("data.horizon", 1, "the forecast horizon"),
)


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return None
        node = node[part]
    return node


def validate(config) -> None:
    """Raises ValueError naming the first count or size a config gets wrong.

    One message per mistake, saying what the value is, what it must be, and how to
    set it; nothing is built or written before this passes.
    """
    for key, low, what in _BOUNDS:
        value = _get(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={value!r}: {what} must be an integer >= {low}; set "
                             f"--config.{key}=N")
        if value < low:
            raise ValueError(f"{key}={value}: {what} must be >= {low}; set --config.{key}=N "
                             f"with N >= {low}")
    arch = _get(config, "model.arch")
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}: known architectures {list(ARCHS)}; set "
                         f"--config.model.arch=blocks or rnn")
    dtype = _get(config, "model.dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}: the compute dtype must be one of "
                         f"{list(DTYPES)} (parameters stay float32); set "
                         f"--config.model.dtype=bfloat16 or --config.model.dtype=float32")
    for key in ("model.dropout", "model.embed_dropout"):
        rate = _get(config, key)
        if rate is not None and not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{key}={rate}: a dropout rate must be in [0, 1)")
    for key in ("model.ar_alpha", "model.tar_beta"):
        value = _get(config, key)
        if value is not None and not 0.0 <= float(value) < math.inf:
            raise ValueError(f"{key}={value}: a regularisation weight must be finite and >= 0")
    lr = _get(config, "optim.lr")
    # A negative lr (gradient ascent) is allowed on purpose: tests use it to make a run
    # worse; zero and non-finite values are always mistakes.
    if lr is not None and (float(lr) == 0.0 or not math.isfinite(float(lr))):
        raise ValueError(f"optim.lr={lr}: the learning rate must be finite and non-zero")
