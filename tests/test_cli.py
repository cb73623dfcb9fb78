"""The ``rnnjax`` command line: help, exit codes and clean error messages.

A user error (unknown key, missing file, bad command) is one line on stderr and a
non-zero exit code, never a traceback. Two tests run a real ``python -m rnnjax``
process to check the exit code the shell sees; the rest call ``cli.main``.
"""

from __future__ import annotations

import json

import pytest
from _helpers import results, run_rnnjax

from rnnjax import cli


@pytest.mark.subprocess
def test_help_in_a_real_process():
    proc = run_rnnjax("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "rnnjax train" in proc.stdout and "rnnjax eval" in proc.stdout
    commands = next(line for line in proc.stdout.splitlines() if line.startswith("commands:"))
    assert {"train", "eval", "sample"} <= set(commands.removeprefix("commands:").replace(
        ",", " ").split())


@pytest.mark.subprocess
def test_unknown_override_key_in_a_real_process():
    proc = run_rnnjax("train", "--config.optim.lrr=1", "--workdir", "/nonexistent/never",
                      timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'optim.lrr'" in proc.stderr and "optim.lr" in proc.stderr
    assert proc.stdout == ""


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_no_arguments_prints_help(capsys):
    code, out, _ = _main(capsys)
    assert code == 0 and "rnnjax train" in out


def test_unknown_command_exits_2(capsys):
    code, out, err = _main(capsys, "trian")
    assert code == 2 and out == ""
    assert "unknown command 'trian'" in err and "train" in err and "Traceback" not in err


def test_unknown_override_key(capsys):
    code, _, err = _main(capsys, "train", "--config", "configs/adding.py:smoke",
                         "--config.optim.lrr=1")
    assert code == 2
    assert "'optim.lrr'" in err and "did you mean optim.lr" in err and "Traceback" not in err


def test_wrong_override_type(capsys):
    code, _, err = _main(capsys, "train", "--config", "configs/adding.py:smoke",
                         "--config.train.steps=many")
    assert code == 2 and "train.steps" in err and "int" in err


def test_unknown_variant(capsys):
    code, _, err = _main(capsys, "train", "--config", "configs/adding.py:smok")
    assert code == 2 and "'smok'" in err and "smoke" in err


def test_missing_config_file(capsys):
    code, _, err = _main(capsys, "train", "--config", "configs/nope.py:smoke")
    assert code == 2
    assert "configs/nope.py" in err and "not found" in err and "Traceback" not in err


def test_override_without_a_value():
    with pytest.raises(SystemExit, match="--config.optim.lr needs a value"):
        cli.main(["train", "--config", "configs/adding.py:smoke", "--config.optim.lr"])


def test_eval_without_workdir_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval"])
    assert e.value.code == 2 and "--workdir" in capsys.readouterr().err


def test_eval_of_a_directory_that_is_not_a_workdir(capsys, tmp_path):
    code, _, err = _main(capsys, "eval", "--workdir", str(tmp_path))
    assert code == 1
    assert str(tmp_path) in err and "not an rnnjax workdir" in err and "Traceback" not in err


def test_train_command_prints_final_metrics(capsys, tmp_path):
    # "--config.k v" (space-separated) works as well as "--config.k=v".
    code, out, _ = _main(capsys, "train", "--config", "configs/text_classify.py:smoke",
                         "--config.train.steps", "2", "--config.data.bucket=False",
                         "--workdir", str(tmp_path),
                         "--no-progress")
    assert code == 0
    printed = json.loads(out)
    assert printed["workdir"] == str(tmp_path)
    assert results(tmp_path)["step"] == 2
    for k, v in results(tmp_path)["eval"].items():
        assert printed["eval"][k] == pytest.approx(v) if isinstance(v, float) else \
            printed["eval"][k] == v, k
