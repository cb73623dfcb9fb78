"""Decoding: greedy vs beam search (beam size, length penalty) for one seq2seq model.

Setting: ``configs/reverse.py:task=copy`` (copy 5-15 letters with a GRU
encoder-decoder and no attention: a long dependency, so the model stays
uncertain and the search has something to fix). ``decode.*`` changes only the
evaluation, so for one seed every row trains the *same* model (same init, data
and steps): the table is a paired comparison of decoders, and the
``greedy_exact_match`` column, identical within a seed, is the control. The
cost is one training per trial; that is the price of the sweep's
one-trial-one-run rule.

Launch (4 beam sizes x 2 length penalties x 2 seeds = 16 runs; an unmeasured
estimate is 25 minutes on a 2-core CPU with 2 workers):

    rnnjax sweep experiments/decoding.py --workers 2 --vmap-seeds
    rnnjax report experiments/decoding.py

Smoke (CI): ``rnnjax sweep experiments/decoding.py --smoke``.

EXPECTED FINDING (Sutskever, Vinyals & Le 2014, Sec. 3.3: "a beam of size 2
provides most of the benefits of beam search"; Wu et al. 2016, GNMT Sec. 7;
Koehn & Knowles 2017, "Six Challenges", Sec. 3.6): beam search is at least as
good as greedy decoding in exact match (a beam of 1 equals greedy), most of the
gain arrives by beam size 2-4, and without length normalisation
(``length_penalty=none``) larger beams favour short hypotheses (an early
``<eos>``), so their exact match stops improving or drops; the GNMT penalty
(alpha 0.6) removes most of that drop.
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, task="copy", smoke=False)
    sweep = {
        "base": f"configs/reverse.py:task={arg.task}",
        "grid": {"decode.beam_size": [1, 2, 4, 8], "decode.length_penalty": ["none", "gnmt"]},
        "seeds": [0, 1],
        "metrics": {"eval.beam_exact_match": "max", "eval.greedy_exact_match": "max"},
        "plot": {"metric": "eval.beam_exact_match", "panel": "decode.length_penalty"},
        "fixed": {"train.eval_every": 500},
        "description": f"Seq2seq {arg.task}: beam size and length penalty at evaluation.",
    }
    if arg.smoke:
        sweep["base"] = f"configs/reverse.py:task={arg.task},smoke"
        sweep["grid"] = {"decode.beam_size": [1, 3], "decode.length_penalty": ["gnmt"]}
        sweep["seeds"] = [0]
        sweep["fixed"] = {}
    return sweep
