"""Regularising a char-level LSTM LM: none vs dropout, locked dropout, weight drop, zoneout,
LayerNorm, and all of them together (AWD-style).

Setting: a 2-layer LSTM (H=128, E=32) char-LM on tiny-shakespeare (the download registry's
``tiny_shakespeare``, 1.1 MB; last 10% validation), random windows of T=64, batch 32, Adam
with warmup-cosine, a fixed budget of ``train.steps`` steps (see ``STEPS``) that fits a shared
2-core CPU. Each arm is one override of ``configs/char_lm.py``; rates are the usual ones
for a model this size (0.25 dropout / weight drop, zoneout 0.1). Every evaluation also runs
the model, in eval mode, on 8 batches of train windows, so results hold the train bits/char
and the train-validation gap (``eval.gap_bits_per_token``).

Launch (7 arms x 2 seeds = 14 runs; measured runtime in docs/studies/regularization.md):

    RNNJAX_CACHE=/path/to/cache rnnjax sweep experiments/regularization.py --workers 2
    rnnjax report experiments/regularization.py

The text is read from ``<cache>/tiny_shakespeare/input.txt`` (``$RNNJAX_CACHE``, else
``~/.cache/rnnjax``; ``python -c "from rnnjax.data.download import fetch;
fetch('tiny_shakespeare')"`` puts it there, or copy the file by hand), or from
``:path=FILE``. Smoke (CI, seconds, no download: ``builtin:sonnets``):
``rnnjax sweep experiments/regularization.py --smoke``.

The locked dropout, weight-drop, zoneout and LayerNorm arms need the cells and options of
``rnnjax/nn/regularizers.py`` and ``rnnjax/nn/lnlstm.py`` (``model.cell_kwargs.weight_drop``,
``.zoneout``, ``.dropout_mode``; ``model.cell=layernorm_lstm``).

EXPECTED FINDING (Zaremba et al. 2014; Gal & Ghahramani 2016; Krueger et al. 2016; Merity
et al. 2017; Ba et al. 2016): regularisation pays where a model overfits. Over a short
budget (about one epoch of the text for a 0.2M-parameter model) the unregularised model
is still underfitting: its train-validation gap is small, so dropout in any form mostly
slows training and costs validation bits/char, while LayerNorm, which speeds optimisation
rather than regularising, may help. Zoneout and LayerNorm run the plain scan (no fused
loop), so they cost about 2.5x the step time. The measured table says which of these held.
"""

from pathlib import Path

from rnnjax.configlib import parse_arg
from rnnjax.data.download import default_cache_dir

#: The step budget: 1M characters, ~1 epoch of tiny-shakespeare at B=32, T=64; what a
#: 2-core CPU shared with other jobs (load ~15) trains 14 runs of in ~40 minutes.
STEPS = 500

ARMS = [
    {"model.dropout": 0.0},  # none
    {"model.dropout": 0.25},  # standard dropout between layers and before the softmax
    {"model.dropout": 0.25, "model.cell_kwargs.dropout_mode": "locked"},  # Gal & Ghahramani
    {"model.cell_kwargs.weight_drop": 0.25},  # DropConnect on W_hh (Merity et al. 2017)
    {"model.cell_kwargs.zoneout": 0.1},  # Krueger et al. 2016
    {"model.cell": "layernorm_lstm"},  # Ba et al. 2016 (haste's LayerNormLSTM)
    {"model.cell": "layernorm_lstm", "model.dropout": 0.25,  # all of them, AWD-style
     "model.cell_kwargs.dropout_mode": "locked", "model.cell_kwargs.weight_drop": 0.25,
     "model.cell_kwargs.zoneout": 0.1},
]


def get_sweep(arg=None):
    arg = parse_arg(arg, smoke=False, path="")
    path = arg.path or str(Path(default_cache_dir()) / "tiny_shakespeare" / "input.txt")
    sweep = {
        "base": "configs/char_lm.py",
        "trials": ARMS,
        "fixed": {"data.path": path, "data.seq_len": 64, "data.train_eval_batches": 8,
                  "model.hidden": 128, "model.embed_dim": 32, "model.num_layers": 2,
                  "optim.warmup_steps": 50, "train.steps": STEPS, "train.batch_size": 32,
                  "train.eval_every": 250, "train.checkpoint_every": 250,
                  "train.eval_batch_size": 64, "train.eval_batches": 8,
                  "train.log_every": 20, "train.plots": False, "train.tensorboard": False},
        "seeds": [0, 1],
        "metrics": {"eval.bits_per_char": "min", "eval.train_bits_per_char": "min",
                    "eval.gap_bits_per_token": "min", "train.steps_per_sec:mean": "max"},
        "plot": {"metric": "eval.bits_per_char"},
        "description": "Char-LM on tiny-shakespeare, 2-layer LSTM 128: regularisers one by one.",
    }
    if arg.smoke:
        sweep["base"] = "configs/char_lm.py:smoke"
        sweep["fixed"] = {"data.path": "builtin:sonnets", "data.train_eval_batches": 1,
                          "model.num_layers": 2}
        sweep["trials"] = [ARMS[0], ARMS[2], ARMS[-1]]
        sweep["seeds"] = [0]
    return sweep
