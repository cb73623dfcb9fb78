"""Decoding: greedy vs beam search (beam size, length penalty), one trained model per seed.

Setting: ``configs/reverse.py:task=filter`` with strings of 5-30 letters: copy only the
letters of the first half of a 10-letter alphabet (``"agbjc"`` -> ``"abc"``), with a
GRU encoder-decoder and no attention, 2,000 steps.

Why this task: a length penalty can only change a beam's choice where the model is
unsure where its output ends. A copy or a reversal ends where its input does (this
study's former task, copy of 5-15 letters, gave identical numbers for ``none`` and
``gnmt``), and so does an addition, in effect: on ``configs/addition.py`` stopped at
600 steps (greedy exact match 0.48, 1,000 problems) 99.5% of the outputs had the
target's length and ``none`` and ``gnmt`` agreed at every beam size from 1 to 8 (a
probe, 2026-11-29). The filter's output length is the number of kept letters (0 to
30, binomial), which the decoder has to track through the content, and at 30 letters
the model is still unsure after 2,000 steps. A probe on one seed (2026-11-29, 512
eval strings, the last checkpoint; greedy exact match 0.818): beam exact match 0.818
at beam 1, 0.840 at beams 2, 4 and 8 for both penalties; outputs that end before their
target (``beam_too_short``) 0.98% at beam 1, 1.17%, 1.56% and 1.56% at beams 2, 4 and
8 without a penalty, 0.98%, 1.37% and 1.37% with ``gnmt``.

The beam size and the length penalty change only the evaluation, so they are an
``eval_grid``: each seed trains once (its periodic evaluations greedy only,
``decode.beam_size=0``), and its last checkpoint is evaluated once per combination by
``rnnjax eval --checkpoint latest --config.decode.beam_size=K
--config.decode.length_penalty=P --record``. The table is a paired comparison of
decoders on the same weights; ``greedy_exact_match``, identical in every row of a seed,
is the control. The eval set is 2,048 strings (``train.eval_batches=8``), so one string
is 0.05%.

Launch (3 seeds, each trained once and then evaluated 8 ways: 3 trainings and 24
evaluations; measured: 6 min 48 s on the shared 2-core CPU with 2 workers, load 4-6):

    rnnjax sweep experiments/decoding.py --workers 2
    rnnjax report experiments/decoding.py

The report has one row per (beam size, length penalty), mean ± std over the seeds, and
``evals_eval_beam_exact_match.png`` / ``evals_eval_beam_too_short.png``: each metric
against the beam size, one line per penalty. Adding a beam size or a penalty to the
eval grid later and running the sweep again trains nothing: only the new evaluations
run.

Smoke (CI, one seed, 2 evaluations; measured 92 s wall, 35 s of CPU, on the shared
2-core CPU at load 7-8):
``rnnjax sweep experiments/decoding.py --smoke``.

EXPECTED FINDING (Sutskever, Vinyals & Le 2014, Sec. 3.3: "a beam of size 2 provides
most of the benefits of beam search"; Wu et al. 2016, GNMT Sec. 7; Koehn & Knowles
2017, "Six Challenges", Sec. 3.6; Murray & Chiang 2018, "Correcting length bias"):
beam search is at least as good as greedy decoding in exact match (a beam of 1 equals
greedy), and most of the gain arrives by beam size 2. Without length normalisation
(``length_penalty=none``) larger beams favour hypotheses that end early:
``beam_too_short`` grows with the beam, and the GNMT penalty (alpha 0.6) holds it
lower. Here the effect is expected to be small (a few strings in a thousand, on a
model that is right about the length 99% of the time) and to show in
``beam_too_short`` more than in exact match, since an output that stops early is
mostly wrong with either penalty.

MEASURED (2026-11-29, 3 seeds; docs/studies/decoding.md): beam 1 = greedy (0.8195); beam 2
0.835, beams 4 and 8 0.837-0.838, the same with either penalty; outputs ending early grow
with the beam without a penalty (0.62% -> 0.70% from beam 2 to 8) and stay lower with GNMT
(0.54-0.57%), differences below the seed spread.
"""

from rnnjax.configlib import parse_arg


def get_sweep(arg=None):
    arg = parse_arg(arg, task="filter", smoke=False)
    sweep = {
        "base": f"configs/reverse.py:task={arg.task}",
        "seeds": [0, 1, 2],
        # Evaluation-only axes: one trained run per seed, evaluated once per combination.
        "eval_grid": {"decode.beam_size": [1, 2, 4, 8],
                      "decode.length_penalty": ["none", "gnmt"]},
        "eval_checkpoint": "latest",  # the weights results.json describes; no choice by metric
        "metrics": {"eval.beam_exact_match": "max", "eval.beam_too_short": "min",
                    "eval.greedy_exact_match": "max"},
        "plot": {"metric": "eval.greedy_exact_match",
                 "eval_metric": ["eval.beam_exact_match", "eval.beam_too_short"]},
        # data.max_len 30: long enough that the model is unsure where outputs end (above);
        # 8 eval batches of 256: 2,048 strings; beam_size 0: training evaluates greedy only.
        "fixed": {"data.max_len": 30, "train.eval_batches": 8, "decode.beam_size": 0},
        "description": f"Seq2seq {arg.task}: beam size and length penalty at evaluation, "
                       f"on one trained model per seed.",
    }
    if arg.smoke:
        sweep["base"] = f"configs/reverse.py:task={arg.task},smoke"
        sweep["eval_grid"] = {"decode.beam_size": [2], "decode.length_penalty": ["none", "gnmt"]}
        sweep["seeds"] = [0]
        sweep["fixed"] = {"decode.beam_size": 0}
    return sweep
