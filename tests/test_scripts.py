"""Smoke runs of the benchmark scripts, so a change in the library cannot silently break them.

Nothing here checks a timing (speed is measured by running the scripts, see README "Speed").
What is checked: each script runs end to end on a tiny shape and writes its JSON, and
bench_decode's two Python-loop beam searches (numpy bookkeeping, an independent
implementation of the same search) pick the same hypotheses with the same scores as
:func:`rnnjax.decoding.beam_search`.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.subprocess  # every test here runs a script as a process


def run_script(name, *args, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args, "--malloc", "default",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("variant", [
    ["--config", "configs/addition.py", "--set", "model.hidden=16"],
    ["--config", "configs/addition.py:cell=gru,attention=bahdanau", "--set", "model.hidden=16",
     "--beam-size", "3"],
])
def test_bench_decode_loops_agree_with_jit_beam_search(tmp_path, variant):
    r = run_script("bench_decode", *variant, "--batch-size", "8", "--repeats", "1",
                   "--eager-repeats", "1", tmp_path=tmp_path)
    assert set(r["agreement"]) == {"python_loop", "python_eager"}
    for name, a in r["agreement"].items():
        assert a["best_hypothesis_equal"] == 1.0, name
        assert a["max_abs_score_diff"] < 1e-5, name
        assert a["decode_steps"] == r["jit"]["decode_steps"], name
    for key in ("speedup", "speedup_vs_eager", "max_speedup_over_floor"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["jit"]["compile_s"] > 0


def test_bench_scan_quick(tmp_path):
    # --quick times the training step only (one compiled program per impl); fwd is null.
    r = run_script("bench_scan", "--quick", tmp_path=tmp_path)
    assert r["complete"] and r["args"]["kinds"] == ["bwd"]
    assert [row["impl"] for row in r["results"]] == r["args"]["impls"]
    assert len(r["args"]["impls"]) == 15  # every impl, old and new families
    assert all(row["bwd_ms"] > 0 and row["fwd_ms"] is None for row in r["results"])
    # every family with a fast and a sequential form gets its ratio (the sLSTM has none)
    assert {p["family"] for p in r["families"]} == {"min_gru", "lru", "mlstm", "mamba2",
                                                    "gdn", "rglru"}
    assert all(p["ratio"] > 0 for p in r["families"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="bench_cells compares against torch (pip install torch==2.13.0)")
def test_bench_cells_quick(tmp_path):
    r = run_script("bench_cells", "--quick", "--impls", "rnnjax,torch,torch_ops,linen",
                   tmp_path=tmp_path)
    impls = set(r["args"]["impls"])
    assert len(r["cases"]) == len(r["args"]["cells"]) * len(r["args"]["modes"])
    for case in r["cases"]:
        assert set(case["results"]) == impls
        assert all(res["tokens_per_s"] > 0 for res in case["results"].values())
        assert math.isfinite(case["results"]["rnnjax"]["ratio_to_torch_ops"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="bench_e2e compares against torch (pip install torch==2.13.0)")
def test_bench_e2e_smoke(tmp_path):
    # passive: the suite's other processes load the machine, where torch's spinning threads
    # can slow its steps many times over (scripts/bench_e2e.py's --omp-wait)
    r = run_script("bench_e2e", "--smoke", "--repeats", "1", "--jobs", "char_lm,classify,adding",
                   "--omp-wait", "passive", "--sides", "rnnjax,torch,torch_ops",
                   tmp_path=tmp_path)
    assert [row["job"] for row in r["results"]] == ["char_lm", "classify", "adding"]
    for row in r["results"]:
        assert set(row["runs"]) == {"rnnjax/default", "torch/default", "torch_ops/default"}
        for runs in row["runs"].values():
            assert all(run["tokens_per_s"] > 0 and run["steady_steps"] > 0 for run in runs)
        # the torch_ops side really runs with oneDNN off, the torch side with it on
        assert [run["torch_onednn"] for run in row["runs"]["torch/default"]] == [True]
        assert [run["torch_onednn"] for run in row["runs"]["torch_ops/default"]] == [False]
        assert math.isfinite(row["ratio"]["default"]["of_medians"])
        assert math.isfinite(row["ratio_to_torch_ops"]["default"]["of_medians"])


def test_bench_gpu_quick(tmp_path):
    # On a CPU: every group runs, cuDNN and torch's CUDA baseline are skipped with their
    # reasons, and nothing fails (a failing implementation makes the script exit 1).
    r = run_script("bench_gpu", "--quick", tmp_path=tmp_path)
    assert r["complete"] and not r["left_out_for_budget"]
    assert [c["group"] for c in r["cases"]] == ["cells", "scans", "mingru", "heads"]
    rows = {(c["group"], row["cell"], row["impl"]): row for c in r["cases"] for row in c["rows"]}
    assert all(row["status"] in ("ok", "skipped") for row in rows.values())
    for key in [("cells", "lstm", "rnnjax_scan"), ("cells", "lstm", "rnnjax_fused"),
                ("cells", "lstm", "linen"), ("cells", "gru", "rnnjax_fused"),
                ("mingru", "min_gru", "min_gru_assoc"), ("heads", "slstm_2heads", "rnnjax_slstm")]:
        assert rows[key]["status"] == "ok" and rows[key]["fwdbwd_tokens_per_s"] > 0, key
    for cell in ("min_gru", "lru", "rglru"):
        row = rows["scans", cell, f"{cell}_associative"]
        assert row["gb_per_s"] > 0 and row["bytes"] > 0
        assert row["fraction_of_peak"] == pytest.approx(row["gb_per_s"] / 4800.0)
    if r["env"]["backend"] == "cpu":
        assert "NVIDIA GPU" in rows["cells", "lstm", "rnnjax_cudnn"]["reason"]
        assert "torch's cuDNN" in rows["cells", "lstm", "torch_cudnn"]["reason"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="bench_breakdown compares against torch (pip install torch==2.13.0)")
def test_bench_breakdown_quick(tmp_path):
    r = run_script("bench_breakdown", "--quick", tmp_path=tmp_path)
    assert [(c["shape"], c["cell"]) for c in r["cases"]] == [("Q", "lstm"), ("Q", "gru")]
    for c in r["cases"]:
        assert all(p["median_ms"] > 0 for p in c["parts"].values())
        # the split adds up to the step it splits (its last part is the remainder)
        assert sum(c["split_ms"].values()) == pytest.approx(c["parts"]["train_step"]["median_ms"])
        assert c["ratio_train_step"] > 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="bench_e2e --breakdown times torch too (pip install torch==2.13.0)")
@pytest.mark.parametrize("job", ["char_lm", "adding"])
def test_bench_e2e_breakdown_smoke(tmp_path, job):
    r = run_script("bench_e2e", "--breakdown", job, "--smoke", "--rounds", "1",
                   tmp_path=tmp_path)
    head = "embed_output_ce_fwd_bwd" if job == "char_lm" else "last_state_head_mse_fwd_bwd"
    assert set(r["median_ms"]) == {
        "train_step", "loss_and_grads", "loss_forward", "recurrent_fwd_bwd", head,
        "optimizer_and_norms", "data_draw_and_put", "torch_train_step",
        "torch_recurrent_fwd_bwd"}
    assert all(v > 0 for v in r["median_ms"].values())
    assert r["job"] == job and r["torch_onednn"] is True


def test_bench_lanes_quick(tmp_path):
    r = run_script("bench_lanes", "--quick", tmp_path=tmp_path)
    assert [(row["cell"], row["H"], row["B"]) for row in r["rows"]] == [("lstm", 8, 8),
                                                                       ("gru", 8, 8)]
    for row in r["rows"]:
        assert set(row["median_ms"]) == {"1", "2", "4"}
        assert all(v > 0 for v in row["median_ms"].values())
        # the blocks are rows of one batch: every count computes the same loss
        losses = list(row["first_loss"].values())
        assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)
        assert row["auto"] == 1 and row["best"] in (1, 2, 4)
