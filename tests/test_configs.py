"""Every config in configs/ builds and trains (smoke variant); config overrides fail loudly.

The smoke test globs configs/*.py, so a new config is tested without editing this
file: a sweep must never die on a config that no longer builds.
"""

from __future__ import annotations

import math
import re

import ml_collections
import pytest
from _helpers import CONFIGS, checkpoint_steps, config, results, rows, train

from rnnjax.configlib import apply_overrides, load_config, parse_arg
from rnnjax.tasks.base import get_task

CONFIG_FILES = sorted(CONFIGS.glob("*.py"))


def test_configs_found():
    # The glob must see the shipped configs; an empty parametrisation would pass vacuously.
    names = {p.stem for p in CONFIG_FILES}
    assert {"adding", "copy", "char_lm", "text_classify", "forecast"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_smoke_variant_trains_end_to_end(path, tmp_path):
    cfg = load_config(f"{path}:smoke")
    assert cfg.train.steps <= 10, "a smoke variant must stay tiny"
    workdir = tmp_path / "run"
    final = train(cfg, workdir)

    for name in ("results.json", "metrics.jsonl", "config.json"):
        assert (workdir / name).is_file(), name
    assert checkpoint_steps(workdir)[-1] == cfg.train.steps
    res = results(workdir)
    assert res["status"] == "done" and res["step"] == cfg.train.steps
    scalars = {k: v for k, v in res["eval"].items() if isinstance(v, (int, float))}
    assert scalars, res
    for k, v in scalars.items():
        assert math.isfinite(v), (k, v)
    # The returned metrics are the ones written to results.json.
    assert {k: final[k] for k in scalars} == scalars
    # The eval loss NT-ASGD's monitor="eval" reads is one of the task's eval metrics.
    assert get_task(cfg.task).eval_loss_metric in scalars
    train_rows = rows(workdir, "train")
    assert [r["step"] for r in train_rows] == list(range(1, cfg.train.steps + 1))
    assert all(math.isfinite(r["loss"]) for r in train_rows)
    assert rows(workdir, "eval"), "no eval rows in metrics.jsonl"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_docstring_gives_launch_command_and_expectation(path):
    module_doc = re.match(r'\s*"""(.*?)"""', path.read_text(), re.S)
    assert module_doc, f"{path.name} has no module docstring"
    doc = module_doc.group(1)
    assert f"rnnjax train --config configs/{path.name}" in doc
    assert "Expected" in doc


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_default_variant_builds(path):
    cfg = load_config(str(path))
    assert cfg.task and cfg.train.steps > 0


# ---------------------------------------------------------------------------
# Overrides.
# ---------------------------------------------------------------------------
def test_unknown_key_names_key_and_close_matches():
    with pytest.raises(ValueError) as e:
        config("adding.py:smoke", "optim.lrr=1")
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "optim.lr" in msg


def test_unknown_section_is_a_value_error():
    with pytest.raises(ValueError, match="unknown config key 'optimm.lr'.*optim.lr"):
        config("adding.py:smoke", "optimm.lr=1")


def test_override_without_equals_sign():
    with pytest.raises(ValueError, match="key=value"):
        config("adding.py:smoke", "optim.lr")


@pytest.mark.parametrize("override", ["train.steps=1.5", "train.steps=abc", "optim.lr=abc",
                                      "model.head_hidden=3", "model.bidirectional=3"])
def test_wrong_type_is_a_value_error(override):
    with pytest.raises(ValueError, match=re.escape(override.split("=")[0])):
        config("adding.py:smoke", override)


def test_int_promotes_to_float():
    cfg = config("adding.py:smoke", "optim.lr=1")
    assert type(cfg.optim.lr) is float and cfg.optim.lr == 1.0
    cfg = load_config(str(CONFIGS / "adding.py:smoke"), {"optim.clip_value": 2})
    assert type(cfg.optim.clip_value) is float and cfg.optim.clip_value == 2.0


@pytest.mark.parametrize("text", ["(32,16)", "[32,16]"])
def test_tuple_override(text):
    cfg = config("text_classify.py:smoke", f"model.head_hidden={text}")
    assert cfg.model.head_hidden == (32, 16)


def test_overrides_apply_after_the_variant():
    cfg = config("adding.py:smoke", "train.steps=7", "optim.lr=3e-4", "model.cell=gru")
    assert (cfg.train.steps, cfg.optim.lr, cfg.model.cell) == (7, 3e-4, "gru")
    assert cfg.train.batch_size == 8  # from the smoke variant


@pytest.mark.parametrize("override,key,expected", [("optim.clip=none", "clip", "none"),
                                                    ("data.column=3", "column", "3")])
def test_string_field_keeps_the_text(override, key, expected):
    cfg = config("forecast.py:smoke", override)
    section = cfg.optim if override.startswith("optim") else cfg.data
    assert section[key] == expected


def test_apply_overrides_on_locked_config_in_place():
    c = ml_collections.ConfigDict({"a": {"b": 1, "c": "x"}})
    c.lock()
    apply_overrides(c, ["a.b=4", "a.c=y"])
    assert c.a.b == 4 and c.a.c == "y"
    with pytest.raises(ValueError, match="a.d"):
        apply_overrides(c, ["a.d=1"])


# ---------------------------------------------------------------------------
# Variant arguments (``configs/x.py:arg``).
# ---------------------------------------------------------------------------
def test_parse_arg_types_and_bare_words():
    arg = parse_arg("cell=gru,T=200,smoke", cell="lstm", T=100, smoke=False)
    assert (arg.cell, arg.T, arg.smoke) == ("gru", 200, True)
    assert type(arg.T) is int
    assert parse_arg(None, T=100).T == 100


def test_parse_arg_unknown_variant_suggests():
    with pytest.raises(ValueError) as e:
        parse_arg("smok", cell="lstm", smoke=False)
    msg = str(e.value)
    assert "'smok'" in msg and "did you mean" in msg and "smoke" in msg


def test_unknown_variant_through_load_config():
    with pytest.raises(ValueError, match="bidirectionl.*bidirectional"):
        load_config(str(CONFIGS / "text_classify.py:bidirectionl"))


def test_parse_arg_bad_number():
    with pytest.raises(ValueError, match="'T' must be a int"):
        parse_arg("T=abc", T=100)


def test_parse_arg_rejects_fractional_int():
    with pytest.raises(ValueError):
        parse_arg("T=1.5", T=100)


def test_variant_changes_config():
    gru = load_config(str(CONFIGS / "adding.py:cell=gru,T=20"))
    assert gru.model.cell == "gru" and gru.data.seq_len == 20


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config("configs/nope.py:smoke")


def test_cell_kwargs_take_new_keys_and_reach_the_cell():
    from rnnjax.tasks.base import build

    cfg = config("adding.py:smoke,cell=lru", "model.cell_kwargs.r_min=0.5",
                 "model.cell_kwargs.r_max=0.6", "model.cell_kwargs.scan_mode=sequential")
    assert dict(cfg.model.cell_kwargs) == {"r_min": 0.5, "r_max": 0.6, "scan_mode": "sequential"}
    _, model = build(cfg)
    cell = model.encoder.layers[0].cell
    assert (cell.r_min, cell.r_max, cell.scan_mode.value) == (0.5, 0.6, "sequential")
    # Only *_kwargs dicts are open: other sections stay locked.
    with pytest.raises(ValueError, match="unknown config key 'model.r_min'"):
        config("adding.py:smoke", "model.r_min=0.5")


def test_a_cell_option_the_cell_does_not_take_is_named():
    from rnnjax.tasks.base import build

    cfg = config("adding.py:smoke,cell=gru", "model.cell_kwargs.forget_bias=0.5")
    with pytest.raises(ValueError, match=r"cell 'gru' takes no option \['forget_bias'\].*"
                                         r"reset_before"):
        build(cfg)
