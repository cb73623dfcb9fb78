"""AWD-LSTM: a word-level LSTM language model with the regularisers and optimiser of
Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models"
(arXiv:1708.02182), on any text corpus.

Launch (Penn Treebank; each file once by hand or through the download registry):

    rnnjax fetch ptb_train && rnnjax fetch ptb_valid     # prints each file's path
    C=$HOME/.cache/rnnjax
    rnnjax train --config configs/awd_lstm.py --workdir runs/awd_ptb \\
        --config.data.path=$C/ptb_train/ptb.train.txt \\
        --config.data.val_path=$C/ptb_valid/ptb.valid.txt
    rnnjax train --config configs/awd_lstm.py:smoke --workdir /tmp/awd_smoke

WikiText-2: ``rnnjax fetch wikitext2`` and ``data.path=.../wikitext-2/wiki.train.tokens``,
``data.val_path=.../wiki.valid.tokens``, ``data.max_vocab=0``.

The recipe, with the paper's values (its Sec. 5 and the authors' salesforce/awd-lstm-lm):
3-layer LSTM, embeddings 400, hidden 1150; weight drop 0.5 on W_hh; locked (variational)
dropout between layers; embedding dropout 0.1; output dropout 0.4; AR alpha 2, TAR beta 1;
NT-ASGD at lr 30 (SGD, no momentum) with non-monotone interval 5; gradient clip 0.25;
weight decay 1.2e-6; BPTT 70; batch 40 (PTB) / 80 (WT2).

Where this config differs from the paper, and why:
* one ``model.dropout`` rate (0.4) serves between layers and before the softmax; the paper
  has 0.25 between layers (``dropouth``), 0.4 on the output and 0.4 on the embedding output
  (``dropouti``, which rnnjax has not got);
* every layer is 1150 wide (``make_rnn`` has one hidden size), so the output layer cannot
  be tied to the 400-d embedding (the paper's last layer is 400 wide to tie it): the output
  layer is untied, 1150 x V, more parameters than the paper's;
* a fixed BPTT window (the paper draws it around 70 per batch);
* NT-ASGD is the paper's (rnnjax/train/optim.py ``nt_asgd``): the trainer feeds it every
  evaluation's validation loss (``optim.kwargs.monitor="eval"``), one every ~epoch as in
  the paper, and evaluates, ranks the best checkpoint by, and ships (``rnnjax eval``,
  ``sample``) the average of the iterates since the trigger, which the checkpoint holds in
  its optimiser state. The paper's final fine-tuning stage (ASGD restarted) is not run;
* the word tokenizer drops line breaks, so there is no ``<eos>`` per sentence as in the paper.
For these reasons the paper's perplexities are not numbers this config has reproduced.

Expected: not measured. No run of this config on PTB or WikiText-2 has been made here (no
network, 2 CPU cores); at about 44M parameters (untied output layer), 250,000 steps are far
beyond a CPU, so a run needs a GPU. The smoke variant trains in seconds and checks the
pipeline only.

Variants: smoke (a tiny model, a few steps on builtin:sonnets).
"""

from rnnjax.config_schema import base_config, smoke
from rnnjax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False)
    c = base_config()
    c.task = "lm"
    c.data.path = "builtin:sonnets"  # any word-level text; see the docstring for PTB / WT2
    c.data.val_path = ""  # a separate validation file ("" = the last val_fraction of path)
    c.data.level = "word"
    c.data.lowercase = False  # PTB is lowercased already
    c.data.val_fraction = 0.1
    c.data.seq_len = 70  # the paper's BPTT length (it varies it per batch; we do not)
    c.data.stateful = True  # truncated BPTT: the carry flows across batches, as in AWD-LSTM
    c.data.min_freq = 1
    c.data.max_vocab = 10000  # PTB's vocabulary size; 0 = no limit (WikiText-2: 33,278)
    c.data.train_eval_batches = 0

    m = c.model
    m.cell = "lstm"
    m.num_layers = 3
    m.embed_dim = 400
    m.hidden = 1150
    m.tie_embeddings = False  # see the docstring: one hidden size, so no tie to 400
    m.dropout = 0.4  # the paper's output dropout; it also applies between layers here
    m.cell_kwargs.dropout_mode = "locked"  # one mask per sequence, shared over time
    m.cell_kwargs.weight_drop = 0.5  # DropConnect on W_hh, the paper's 0.5
    m.embed_dropout = 0.1  # whole words dropped, the paper's dropoute
    m.ar_alpha = 2.0  # activation regularisation (the paper's alpha)
    m.tar_beta = 1.0  # temporal activation regularisation (beta)

    o = c.optim
    o.name = "nt_asgd"
    o.lr = 30.0  # SGD learning rate of the paper
    o.schedule = "constant"
    o.clip = "global_norm"
    o.clip_value = 0.25
    o.weight_decay = 1.2e-6
    # The paper's trigger: the validation loss has not improved on its best older value for
    # nonmono = 5 evaluations (epochs; train.eval_every is ~ an epoch of PTB). "grad_norm" or
    # "loss" would log the interval-mean gradient norm / training loss every `interval`
    # steps instead (unused with "eval").
    o.kwargs.monitor = "eval"
    o.kwargs.nonmono = 5
    o.kwargs.interval = 330

    t = c.train
    t.batch_size = 40  # PTB; 80 for WikiText-2
    t.steps = 250_000  # ~750 epochs of PTB (the paper trains 750 epochs plus fine-tuning)
    t.eval_every = 330  # ~ an epoch of PTB at batch 40, T 70: one NT-ASGD log, as the paper
    t.checkpoint_every = 990  # a multiple of eval_every, so every checkpoint is ranked
    t.eval_batch_size = 10
    t.eval_batches = 1000  # the whole validation file
    if arg.smoke:
        smoke(c)
        c.data.seq_len = 8
        c.data.max_vocab = 200
        c.model.num_layers = 2
        c.model.hidden = 8
        c.model.embed_dim = 8
        c.optim.lr = 1.0
        c.optim.kwargs.interval = 1
        c.optim.kwargs.nonmono = 1
        c.optim.kwargs.start_step = 2  # 4 steps cannot trigger by the rule: average 2-4
    return c
