"""Every study in experiments/ expands, every trial's config builds, and the smoke modes run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnjax.cli import main
from rnnjax.configlib import load_config
from rnnjax.sweeps import expand, load_study, run_sweep
from rnnjax.sweeps.search import preview

REPO = Path(__file__).resolve().parent.parent
STUDIES = sorted((REPO / "experiments").glob("*.py"))
#: Extra variants each study documents (beside the default and smoke).
VARIANTS = {"vanishing_gradients": ["quick"], "teacher_forcing": ["task=copy"],
            "depth_direction": ["cell=gru,T=50"], "min_rnn_selective_copy": ["families=new"]}
OPTUNA_REASON = "optuna not installed: pip install 'rnnjax[cluster]' to run an Optuna study"


def _trials(study, root):
    """A study's trials; for an Optuna search (chosen as it runs), random draws from its
    space named as the search names them (enough to check every config it can make)."""
    return preview(study, root) if study.optuna is not None else expand(study, root)


def test_the_five_studies_exist():
    assert {p.stem for p in STUDIES} >= {"vanishing_gradients", "clipping", "teacher_forcing",
                                        "decoding", "depth_direction"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_docstring_names_launch_command_and_expected_finding(path):
    doc = path.read_text().split('"""')[1]
    assert f"rnnjax sweep experiments/{path.name}" in doc
    assert "EXPECTED FINDING" in doc
    assert "--smoke" in doc


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_trial_config_loads(path, tmp_path):
    """Unknown keys or wrong types in a study fail here, not an hour into a sweep."""
    for arg in [None, *VARIANTS.get(path.stem, [])]:
        spec = str(path) if arg is None else f"{path}:{arg}"
        study = load_study(spec)
        trials = _trials(study, tmp_path)
        # An Optuna search runs one seed per trial (its trials are its repeats).
        assert len(trials) >= 2 and len(study.seeds) >= (1 if study.optuna else 2), spec
        assert study.metrics, spec
        for t in trials:
            cfg = load_config(t.spec, t.cli_overrides())
            assert cfg.seed == t.seed
            for k, v in t.config_overrides.items():
                assert _get(cfg, k) == (tuple(v) if isinstance(v, list) else v), (spec, k)
            # Each evaluation's overrides load on the trained config, as `rnnjax eval`
            # applies them (the strings it is given).
            for e in t.evaluations:
                cfg = load_config(t.spec, t.cli_overrides() + t.eval_args(e))
                for k, v in e.items():
                    assert _get(cfg, k) == v, (spec, k)


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_smoke_mode_is_ci_sized_and_builds(path, tmp_path):
    from rnnjax.tasks.base import build

    study = load_study(str(path), smoke=True)
    trials = _trials(study, tmp_path)
    assert study.seeds == [0] and 1 <= len(trials) <= 6
    assert sum(len(t.evaluations) for t in trials) <= 4  # each a process of its own
    for t in trials:
        cfg = load_config(t.spec, t.cli_overrides())
        assert cfg.train.steps <= 10 and cfg.model.hidden <= 16
        build(cfg)  # the task's data and the model construct


def test_one_smoke_study_runs_end_to_end_with_two_workers(tmp_path, capsys):
    root = tmp_path / "vg"
    rc = main(["sweep", str(REPO / "experiments" / "vanishing_gradients.py"), "--smoke",
               "--workers", "2", "--root", str(root), "--report"])
    assert rc == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["counts"] == {"done": 2}
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| cell | T | eval.mse ↓")
    assert [ln.split(" | ")[0] for ln in table[1:]] == ["| rnn_tanh", "| lstm"]
    for ln in table[1:]:
        assert ln.endswith("| 1/1 | 0 |")  # one seed done, none failed
    assert (root / "report" / "curves_eval_mse.png").exists()
    sweep = json.loads((root / "sweep.json").read_text())
    assert sweep["study"] == "vanishing_gradients_smoke"


@pytest.mark.subprocess
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_smoke_study_runs_end_to_end(path, tmp_path):
    if load_study(str(path)).optuna is not None:
        pytest.importorskip("optuna", reason=OPTUNA_REASON)
    out = run_sweep(str(path), tmp_path, workers=2, smoke=True, log=lambda s: None)
    assert set(out["counts"]) == {"done"}, out["counts"]
    if load_study(str(path)).eval_grid:
        assert set(out["eval_counts"]) == {"done"}, out["eval_counts"]
