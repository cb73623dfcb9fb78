"""``rnnjax eval`` with evaluation-only overrides, and the records it writes with --record.

One tiny seq2seq run (configs/reverse.py:smoke, 4 steps) is trained in-process and
evaluated again with the decoder changed. What is checked against something
independent of the code under test: the unchanged config reproduces the trainer's own
final evaluation of the last step (``results.json``); ``decode.beam_size=0`` takes the
beam metric away (the task's documented switch), so the override reached the task; a
key outside the evaluation settings is refused before anything is built.
"""

from __future__ import annotations

import json

import pytest
from _helpers import config, results, train

from rnnjax import cli
from rnnjax.config_schema import EVAL_ONLY_KEYS, is_eval_only
from rnnjax.inference import run_eval
from rnnjax.train.workdir import Workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("s2s")
    train(config("reverse.py:smoke"), workdir)
    return workdir


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_only_keys_are_the_decoder_and_the_eval_set():
    assert EVAL_ONLY_KEYS == ("decode", "train.eval_batch_size", "train.eval_batches")
    assert is_eval_only("decode.beam_size") and is_eval_only("decode.length_penalty")
    assert is_eval_only("train.eval_batches")
    for key in ("decoder.beam_size", "decode_x", "train.steps", "model.hidden", "seed",
                "train.eval_every"):  # eval_every changes which checkpoint is best
        assert not is_eval_only(key), key


def test_unchanged_config_reproduces_the_trainers_final_evaluation(trained):
    final = results(trained)["eval"]
    again = run_eval(trained, "latest", ["decode.beam_size=2"])  # the smoke's own value
    assert again["checkpoint_step"] == results(trained)["step"] == 4
    for key in ("loss", "token_accuracy", "greedy_exact_match", "beam_exact_match"):
        assert again[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key


def test_eval_cli_override_reaches_the_task_and_is_recorded(trained, capsys):
    code, out, _ = _main(capsys, "eval", "--workdir", str(trained), "--checkpoint", "latest",
                         "--config.decode.beam_size=0", "--config.decode.length_penalty=none",
                         "--record")
    assert code == 0
    printed = json.loads(out)
    assert "beam_exact_match" not in printed  # beam_size 0: no beam search at all
    wd = Workdir(trained)
    name = wd.eval_name("latest", ["decode.length_penalty=none", "decode.beam_size=0"])
    assert name.startswith("latest-decode.beam_size=0,decode.length_penalty=none-")
    record = wd.read_eval(name)
    assert record["status"] == "done" and wd.eval_status(name) == "done"
    assert record["overrides"] == {"decode.beam_size": 0, "decode.length_penalty": "none"}
    assert record["checkpoint"] == "latest" and record["checkpoint_step"] == 4
    assert record["trained_step"] == 4
    assert record["eval"] == pytest.approx(printed)
    # The record names its checkpoint and the strings as given: another is another record.
    assert wd.eval_name("best", ["decode.beam_size=0", "decode.length_penalty=none"]) != name
    assert wd.eval_name("latest", ["decode.beam_size=0", "decode.length_penalty='none'"]) != name
    # Without --record nothing is written.
    before = sorted(p.name for p in wd.evals_dir.iterdir())
    assert _main(capsys, "eval", "--workdir", str(trained), "--checkpoint", "latest",
                 "--config.decode.beam_size=1")[0] == 0
    assert sorted(p.name for p in wd.evals_dir.iterdir()) == before


def test_eval_refuses_a_key_that_changes_training(trained, capsys):
    code, out, err = _main(capsys, "eval", "--workdir", str(trained),
                           "--config.model.hidden=8", "--config.decode.beam_size=3")
    assert code == 2 and out == ""
    assert "'model.hidden' would change the trained run" in err
    assert "decode.*" in err and "train another run" in err
    assert "Traceback" not in err


def test_eval_unknown_key_names_the_close_match(trained, capsys):
    code, _, err = _main(capsys, "eval", "--workdir", str(trained),
                         "--config.decode.beam_sise=3")
    assert code == 2 and "decode.beam_size" in err


def test_a_failed_recorded_evaluation_is_recorded_as_failed(trained, capsys):
    code, _, err = _main(capsys, "eval", "--workdir", str(trained),
                         "--config.decode.length_penalty=shortest", "--record")
    assert code == 2 and "shortest" in err
    wd = Workdir(trained)
    name = wd.eval_name("best", ["decode.length_penalty=shortest"])
    record = wd.read_eval(name)
    assert record["status"] == "failed" and wd.eval_status(name) == "failed"
    assert "shortest" in record["error"] and "Traceback" in record["traceback"]


def test_a_record_of_a_run_trained_further_since_is_out_of_date(tmp_path):
    wd = Workdir(tmp_path)
    wd.write_results(step=4, best_step=4, eval_metrics={})
    wd.write_eval("x", checkpoint="latest", checkpoint_step=4, overrides={}, eval_metrics={})
    assert wd.eval_status("x") == "done"
    wd.write_results(step=8, best_step=8, eval_metrics={})
    assert wd.eval_status("x") == "pending"
    assert wd.eval_status("never") == "pending"
