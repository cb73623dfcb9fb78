"""Reports: mean ± std tables, derived metrics, success rates, curves (fabricated workdirs)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap

import numpy as np
import pytest

from rnnjax.cli import main
from rnnjax.sweeps.report import mean_curve, report
from rnnjax.sweeps.study import expand, load_study

STUDY = '''
def get_sweep(arg=None):
    return {
        "base": "configs/adding.py",
        "grid": {"model.cell": ["lstm", "gru"], ":T": [50]},
        "seeds": [0, 1, 2],
        "metrics": {"eval.mse": "min", "train.grad_norm:max": "min", "eval.mse:min": "min"},
        "success": {"eval.mse": ("<=", 0.1)},
        "plot": {"metric": "eval.mse", "logy": True, "hline": 0.167},
    }
'''

# Final eval MSE per (cell, seed); grad-norm rows per (cell, seed).
FINAL = {("lstm", 0): 0.05, ("lstm", 1): 0.07, ("lstm", 2): 0.3,
         ("gru", 0): 0.02, ("gru", 1): None, ("gru", 2): "pending"}
GRADS = {("lstm", 0): [1.0, 9.0, 2.0], ("lstm", 1): [3.0, 4.0], ("lstm", 2): [0.5],
         ("gru", 0): [2.5, 1.5], ("gru", 1): [7.0, "nan"]}  # MetricWriter logs NaN as a string
EVAL_CURVE = {("lstm", 0): [0.2, 0.05], ("lstm", 1): [0.1, 0.07], ("lstm", 2): [0.4, 0.3],
              ("gru", 0): [0.03, 0.02], ("gru", 1): [0.5]}


def _write(wd, rows, results=None, failed=None):
    wd.mkdir(parents=True)
    (wd / "config.json").write_text("{}")
    with open(wd / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if results is not None:
        (wd / "results.json").write_text(json.dumps(results))
    if failed is not None:
        (wd / "failed.json").write_text(json.dumps(failed))


@pytest.fixture
def fabricated(tmp_path):
    study_file = tmp_path / "fake.py"
    study_file.write_text(textwrap.dedent(STUDY))
    root = tmp_path / "root"
    study = load_study(str(study_file))
    for t in expand(study, root):
        key = (t.overrides["model.cell"], t.seed)
        final = FINAL[key]
        if final == "pending":
            continue  # never started: no workdir
        rows = [{"step": 10 * (i + 1), "split": "train", "grad_norm": g}
                for i, g in enumerate(GRADS[key])]
        rows += [{"step": 100 * (i + 1), "split": "eval", "mse": v}
                 for i, v in enumerate(EVAL_CURVE[key])]
        if final is None:
            _write(t.workdir, rows, failed={"error": "non-finite loss (nan) at step 20"})
        else:
            _write(t.workdir, rows, results={"status": "done", "eval": {"mse": final}})
    return study_file, root


def test_table_mean_std_success_and_failures(fabricated):
    study_file, root = fabricated
    out = report(str(study_file), root)
    rows = {r["overrides"]["model.cell"]: r for r in out["rows"]}
    lstm, gru = rows["lstm"], rows["gru"]
    # Final eval MSE: mean and sample std over the done seeds.
    vals = [0.05, 0.07, 0.3]
    assert lstm["metrics"]["eval.mse"]["mean"] == pytest.approx(statistics.fmean(vals))
    assert lstm["metrics"]["eval.mse"]["std"] == pytest.approx(statistics.stdev(vals))
    assert gru["metrics"]["eval.mse"]["n"] == 1 and math.isnan(gru["metrics"]["eval.mse"]["std"])
    # Derived from metrics.jsonl: the largest gradient-norm spike per seed (failed seeds too).
    maxes = [9.0, 4.0, 0.5]
    assert lstm["metrics"]["train.grad_norm:max"]["mean"] == pytest.approx(statistics.fmean(maxes))
    assert gru["metrics"]["train.grad_norm:max"]["values"][:2] == [2.5, 7.0]
    assert gru["metrics"]["train.grad_norm:max"]["mean"] == pytest.approx(4.75)
    # Best eval MSE over the curve.
    assert lstm["metrics"]["eval.mse:min"]["values"] == [0.05, 0.07, 0.3]
    # Success: done seeds with mse <= 0.1, over done + failed seeds.
    assert lstm["success"]["eval.mse"] == {"hits": 2, "n": 3, "rate": pytest.approx(2 / 3)}
    assert gru["success"]["eval.mse"] == {"hits": 1, "n": 2, "rate": 0.5}
    assert (lstm["done"], lstm["failed"], lstm["pending"]) == (3, 0, 0)
    assert (gru["done"], gru["failed"], gru["pending"]) == (1, 1, 1)

    md = out["markdown"].splitlines()
    assert md[0] == ("| cell | T | eval.mse ↓ | train.grad_norm:max ↓ | eval.mse:min ↓ | "
                     "success eval.mse <= 0.1 | seeds done | failed |")
    m, s = statistics.fmean(vals), statistics.stdev(vals)
    # lstm has the lowest max grad norm (4.5 < 4.75) and best-seen MSE: bold there.
    assert md[2] == (f"| lstm | 50 | {m:.4g} ± {s:.2g} | **{statistics.fmean(maxes):.4g} ± "
                     f"{statistics.stdev(maxes):.2g}** | **{m:.4g} ± {s:.2g}** | 2/3 | 3/3 | 0 |")
    # gru has the best (lowest) final MSE: bold; one seed: no ±.
    assert md[3].startswith("| gru | 50 | **0.02** | 4.75 ± ")
    assert md[3].endswith("| 1/2 | 1/3 | 1 |")
    text = out["table_md"].read_text()
    assert "non-finite loss (nan) at step 20" in text and "curves_eval_mse.png" in text

    table = list(csv.DictReader(io.StringIO(out["table_csv"].read_text())))
    assert [r["cell"] for r in table] == ["lstm", "gru"]
    assert float(table[0]["eval.mse mean"]) == pytest.approx(m)
    assert float(table[0]["eval.mse std"]) == pytest.approx(s)
    assert table[1]["eval.mse std"] == "" and table[1]["failed"] == "1"
    assert float(table[1]["success eval.mse <= 0.1 rate"]) == 0.5

    png = out["plots"][0]
    assert png.name == "curves_eval_mse.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_curve_matches_numpy_on_ragged_seeds():
    a = (np.array([100, 200, 300]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([100, 200]), np.array([3.0, 6.0]))
    c = (np.array([200, 300]), np.array([4.0, 5.0]))
    steps, mean, std = mean_curve([a, b, c])
    assert steps.tolist() == [100, 200, 300]
    np.testing.assert_allclose(mean, [2.0, 4.0, 4.0])
    np.testing.assert_allclose(std, [np.std([1, 3], ddof=1), np.std([2, 6, 4], ddof=1),
                                     np.std([3, 5], ddof=1)])
    _, _, one = mean_curve([a])
    assert np.isnan(one).all()


def test_report_cli_prints_the_table(fabricated, capsys):
    study_file, root = fabricated
    assert main(["report", str(study_file), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| cell | T | eval.mse ↓")
    assert (root / "report" / "table.csv").exists()


def test_report_without_a_sweep_root_says_so(tmp_path, capsys):
    study_file = tmp_path / "fake.py"
    study_file.write_text(textwrap.dedent(STUDY))
    assert main(["report", str(study_file), "--root", str(tmp_path / "nope")]) == 2
    assert "run the study first" in capsys.readouterr().err


def test_unknown_panel_field_is_an_error(fabricated):
    study_file, root = fabricated
    study = load_study(str(study_file))
    study.plot["panel"] = "model.hidden"
    with pytest.raises(ValueError, match="plot.panel"):
        report(study, root)


# ---------------------------------------------------------------------------
# An eval grid: a row per training configuration x eval combination.
# ---------------------------------------------------------------------------
EVAL_STUDY = '''
def get_sweep(arg=None):
    return {
        "base": "configs/reverse.py",
        "grid": {"model.hidden": [8, 16]},
        "seeds": [0, 1],
        "eval_grid": {"decode.beam_size": [1, 4], "decode.length_penalty": ["none", "gnmt"]},
        "metrics": {"eval.beam_exact_match": "max", "train.loss:last": "min"},
        "plot": {"metric": "train.loss"},
    }
'''


def _beam_em(hidden, seed, beam, lp):
    """A made-up exact match, distinct for every (config, seed, combination)."""
    return hidden / 100 + seed / 1000 + beam / 10 + (0.05 if lp == "gnmt" else 0.0)


@pytest.fixture
def fabricated_evals(tmp_path):
    """hidden=8: both seeds trained and evaluated, except one evaluation of seed 1 that
    failed and one never run; hidden=16: seed 0 trained and evaluated, seed 1 diverged."""
    from rnnjax.train.workdir import Workdir

    study_file = tmp_path / "evals.py"
    study_file.write_text(textwrap.dedent(EVAL_STUDY))
    root = tmp_path / "root"
    study = load_study(str(study_file))
    for t in expand(study, root):
        hidden, seed = t.overrides["model.hidden"], t.seed
        rows = [{"step": s, "split": "train", "loss": 1.0 / s + hidden / 100 + seed}
                for s in (1, 2, 3)]
        if (hidden, seed) == (16, 1):
            _write(t.workdir, rows, failed={"error": "non-finite loss (nan) at step 3"})
            continue
        # results.json holds the trained config's own evaluation: never a row's value.
        _write(t.workdir, rows, results={"status": "done", "step": 3,
                                         "eval": {"beam_exact_match": -1.0}})
        wd = Workdir(t.workdir)
        for e in t.evaluations:
            beam, lp = e["decode.beam_size"], e["decode.length_penalty"]
            name = wd.eval_name("latest", t.eval_args(e))
            if (hidden, seed, beam, lp) == (8, 1, 4, "none"):
                wd.record_eval_failure(name, "ValueError: the beam fell over")
            elif (hidden, seed, beam, lp) == (8, 1, 4, "gnmt"):
                continue  # not evaluated yet
            else:
                wd.write_eval(name, checkpoint="latest", checkpoint_step=3, overrides=e,
                              eval_metrics={"beam_exact_match": _beam_em(hidden, seed, beam,
                                                                         lp)})
    return study_file, root


def test_eval_grid_report_has_a_row_per_config_and_combination(fabricated_evals):
    study_file, root = fabricated_evals
    out = report(str(study_file), root)
    rows = out["rows"]
    combos = [(b, lp) for b in (1, 4) for lp in ("none", "gnmt")]
    assert [(r["overrides"]["model.hidden"], r["overrides"]["decode.beam_size"],
             r["overrides"]["decode.length_penalty"]) for r in rows] == \
        [(h, b, lp) for h in (8, 16) for b, lp in combos]
    by = {(r["overrides"]["model.hidden"], r["overrides"]["decode.beam_size"],
           r["overrides"]["decode.length_penalty"]): r for r in rows}
    # Seeds aggregated per combination, from the evaluation records.
    for b, lp in combos[:2]:
        vals = [_beam_em(8, s, b, lp) for s in (0, 1)]
        r = by[(8, b, lp)]
        assert r["metrics"]["eval.beam_exact_match"]["mean"] == pytest.approx(np.mean(vals))
        assert r["metrics"]["eval.beam_exact_match"]["std"] == pytest.approx(
            statistics.stdev(vals))
        assert (r["done"], r["failed"], r["pending"]) == (2, 0, 0)
    assert (by[(8, 4, "none")]["done"], by[(8, 4, "none")]["failed"]) == (1, 1)
    assert (by[(8, 4, "gnmt")]["done"], by[(8, 4, "gnmt")]["pending"]) == (1, 1)
    # A training metric is the training's: the same in every combination of a config.
    losses = {r["metrics"]["train.loss:last"]["mean"] for k, r in by.items() if k[0] == 8}
    assert len(losses) == 1 and losses.pop() == pytest.approx(1 / 3 + 0.08 + 0.5)
    # The diverged seed is a failure of each of its config's rows, listed once.
    for b, lp in combos:
        r = by[(16, b, lp)]
        assert (r["done"], r["failed"]) == (1, 1)
        assert r["metrics"]["eval.beam_exact_match"]["values"][0] == pytest.approx(
            _beam_em(16, 0, b, lp))
    text = out["table_md"].read_text()
    assert text.count("non-finite loss (nan) at step 3") == 1
    assert "the beam fell over" in text and "decode.length_penalty=none" in text
    assert "4 trained runs (2 training configurations x 2 seeds), each evaluated from its " \
           "latest checkpoint in 4 ways" in text
    assert out["markdown"].splitlines()[0] == (
        "| hidden | beam_size | length_penalty | eval.beam_exact_match ↑ | "
        "train.loss:last ↓ | seeds done | failed |")
    table = list(csv.DictReader(io.StringIO(out["table_csv"].read_text())))
    assert [(r["hidden"], r["beam_size"], r["length_penalty"]) for r in table][:2] == [
        ("8", "1", "none"), ("8", "1", "gnmt")]
    names = sorted(p.name for p in out["plots"])
    assert names == ["curves_train_loss.png", "evals_eval_beam_exact_match.png"]


def test_a_panel_on_an_eval_axis_is_an_error_that_says_why(fabricated_evals):
    study_file, root = fabricated_evals
    study = load_study(str(study_file))
    study.plot["panel"] = "decode.length_penalty"
    with pytest.raises(ValueError, match="eval_grid axis, which does not change training"):
        report(study, root)
