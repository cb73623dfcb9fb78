"""Sweeps: expansion (grid, random, list x seeds), names, running, resuming, failures, vmap."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnjax.configlib import load_config
from rnnjax.sweeps import expand, load_study, run_sweep, study_from_dict, trial_status, vmap_groups
from rnnjax.train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
ADDING = str(REPO / "configs" / "adding.py")


def _study(**desc):
    return study_from_dict({"base": "configs/adding.py", **desc}, name="t")


# ---------------------------------------------------------------------------
# Expansion.
# ---------------------------------------------------------------------------
def test_grid_times_seeds_order_names_and_specs(tmp_path):
    s = _study(base="configs/adding.py:T=100,smoke",
               grid={"model.cell": ["lstm", "gru"], ":T": [50, 200]}, seeds=[0, 1],
               fixed={"train.steps": 7})
    trials = expand(s, tmp_path)
    want = [{"model.cell": c, ":T": T, "seed": seed}
            for c, T, seed in itertools.product(["lstm", "gru"], [50, 200], [0, 1])]
    assert [t.overrides for t in trials] == want
    readable = [t.name.rsplit("-", 1)[0] for t in trials]
    assert readable[5] == "cell=gru,T=50,seed=1"
    # The hash covers base, fixed values and overrides: recompute it independently.
    ident = {"base": s.base, "fixed": {"train.steps": 7}, "overrides": want[5]}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:6]
    assert trials[5].name == f"cell=gru,T=50,seed=1-{digest}"
    assert [t.name for t in expand(s, tmp_path)] == [t.name for t in trials]  # stable
    assert len({t.name for t in trials}) == len(trials)
    t = trials[5]
    assert t.workdir == tmp_path / t.name
    # Variant args merge into the base spec (later wins, bare words kept).
    assert t.spec == f"{ADDING}:T=50,smoke"
    assert t.config_overrides == {"train.steps": 7, "model.cell": "gru", "seed": 1}
    assert t.group == {"model.cell": "gru", ":T": 50}
    cmd = t.command("py")
    assert cmd[:6] == ["py", "-m", "rnnjax", "train", "--config", t.spec]
    assert "--config.model.cell=gru" in cmd and "--config.seed=1" in cmd
    # The command's config is what the trial means.
    c = load_config(t.spec, t.cli_overrides())
    assert (c.model.cell, c.data.seq_len, c.seed, c.train.steps) == ("gru", 50, 1, 7)
    # A different fixed value is a different run: a new name.
    s2 = _study(base="configs/adding.py:T=100,smoke",
                grid={"model.cell": ["lstm", "gru"], ":T": [50, 200]}, seeds=[0, 1],
                fixed={"train.steps": 8})
    assert expand(s2, tmp_path)[5].name != t.name
    assert expand(s2, tmp_path)[5].name.startswith("cell=gru,T=50,seed=1-")


def test_random_search_is_reproducible_and_in_range(tmp_path):
    space = {"optim.lr": ("loguniform", 1e-4, 1e-2), "model.hidden": ("choice", [16, 32]),
             "optim.clip_value": ("uniform", 0.5, 2.0), "model.num_layers": ("int", 1, 3)}
    s = _study(random={"n": 40, "seed": 3, "space": space}, seeds=[0, 1])
    trials = expand(s, tmp_path)
    assert len(trials) == 80
    confs = [t.group for t in trials[::2]]
    assert [t.seed for t in trials[:4]] == [0, 1, 0, 1]
    assert trials[0].group == trials[1].group
    lrs = np.array([c["optim.lr"] for c in confs])
    assert np.all((lrs >= 1e-4 * 0.999) & (lrs <= 1e-2 * 1.001))
    # Log-uniform: about half the draws below the geometric midpoint 1e-3.
    assert 10 <= np.sum(lrs < 1e-3) <= 30
    assert all(float(f"{v:.3g}") == v for v in lrs)  # 3 significant digits
    assert {c["model.hidden"] for c in confs} == {16, 32}
    assert {c["model.num_layers"] for c in confs} == {1, 2, 3}
    assert all(0.5 <= c["optim.clip_value"] <= 2.0 for c in confs)
    again = expand(_study(random={"n": 40, "seed": 3, "space": space}, seeds=[0, 1]), tmp_path)
    assert [t.name for t in again] == [t.name for t in trials]
    other = expand(_study(random={"n": 40, "seed": 4, "space": space}, seeds=[0, 1]), tmp_path)
    assert [t.group for t in other] != [t.group for t in trials]


def test_explicit_list_and_no_axes(tmp_path):
    s = _study(trials=[{"model.cell": "gru"}, {"model.cell": "lstm", ":T": 20}], seeds=[5])
    trials = expand(s, tmp_path)
    assert [t.overrides for t in trials] == [{"model.cell": "gru", "seed": 5},
                                            {"model.cell": "lstm", ":T": 20, "seed": 5}]
    assert trials[1].name.startswith("cell=lstm,T=20,seed=5-")
    assert trials[1].spec == f"{ADDING}:T=20"
    single = expand(_study(seeds=[0, 1]), tmp_path)
    assert [t.overrides for t in single] == [{"seed": 0}, {"seed": 1}]


def test_names_disambiguate_shared_leaves_and_format_values(tmp_path):
    s = _study(grid={"model.hidden": [8], ":hidden": [4], "optim.lr": [0.00123456],
                     "model.head_hidden": [(16, 8)], "model.bidirectional": [True]})
    name = expand(s, tmp_path)[0].name.rsplit("-", 1)[0]
    assert name == ("model.hidden=8,hidden=4,lr=0.00123,head_hidden=16x8,"
                    "bidirectional=true,seed=0")


@pytest.mark.parametrize("desc, match", [
    ({"grid": {"a.b": [1]}, "trials": [{"a.b": 1}]}, "at most one"),
    ({"grid": {"seed": [1, 2]}}, "seeds"),
    ({"grid": {"a.b": []}}, "no values"),
    ({"seeds": [0, 0]}, "repeats"),
    ({"metrics": {"mse": "min"}}, "<split>.<key>"),
    ({"metrics": {"eval.mse": "lowest"}}, "better"),
    ({"metrics": {"train.loss:median": "min"}}, "aggregation"),
    ({"random": {"n": 2, "space": {"optim.lr": ("normal", 0, 1)}}}, "loguniform"),
    ({"random": {"n": 2, "space": {"optim.lr": ("loguniform", 0.0, 1.0)}}}, "lo > 0"),
    ({"success": {"eval.mse": ("==", 1)}}, "op one of"),
    ({"grdi": {}}, "unknown fields"),
    ({"eval_grid": {"decode.beam_size": []}}, "non-empty list"),
    ({"eval_grid": {"decode.beam_size": 4}}, "non-empty list"),
    ({"eval_grid": {":T": [50]}}, "config-variant argument"),
    ({"eval_grid": {"seed": [0]}}, "put it in 'grid'"),
    ({"grid": {"decode.beam_size": [1]}, "eval_grid": {"decode.beam_size": [2]}},
     "both training axes and eval_grid axes"),
    ({"eval_checkpoint": "first", "eval_grid": {"decode.beam_size": [2]}},
     "eval_checkpoint must be one of"),
    ({"optuna": {"n_trials": 2, "space": {"optim.lr": ("loguniform", 1e-3, 1e-2)},
                 "metric": "eval.mse"}, "eval_grid": {"decode.beam_size": [2]}},
     "Optuna search .* takes no eval_grid"),
])
def test_bad_study_raises(desc, match):
    with pytest.raises(ValueError, match=match):
        _study(**desc)


def test_an_eval_grid_key_that_changes_training_is_refused_with_what_to_do():
    for key in ("model.hidden", "optim.lr", "train.steps", "data.max_len"):
        with pytest.raises(ValueError) as e:
            _study(eval_grid={"decode.beam_size": [1, 2], key: [1, 2]})
        msg = str(e.value)
        assert f"{key!r} would change the trained run" in msg, msg
        assert "Move such keys to 'grid'" in msg and "decode.*" in msg


def test_eval_grid_trials_are_the_training_grid_and_each_carries_the_evaluations(tmp_path):
    desc = {"base": "configs/reverse.py:smoke", "grid": {"model.hidden": [4, 8]},
            "seeds": [0, 1]}
    plain = expand(study_from_dict(desc, name="t"), tmp_path)
    s = study_from_dict({**desc, "eval_grid": {"decode.beam_size": [1, 4],
                                               "decode.length_penalty": ["none", "gnmt"]}},
                        name="t")
    trials = expand(s, tmp_path)
    # One trial per training configuration x seed, named as without the eval grid: adding
    # eval axes (or values) later reuses the trained runs.
    assert [t.name for t in trials] == [t.name for t in plain] and len(trials) == 4
    assert s.eval_axes == ["decode.beam_size", "decode.length_penalty"]
    assert s.eval_checkpoint == "latest"
    t = trials[3]
    assert t.evaluations == [{"decode.beam_size": b, "decode.length_penalty": lp}
                             for b in (1, 4) for lp in ("none", "gnmt")]
    # "none" would read back as None: it is quoted, so it stays the string.
    assert t.eval_args(t.evaluations[0]) == ["decode.beam_size=1",
                                            "decode.length_penalty='none'"]
    cmd = t.eval_command(t.evaluations[0], python="py")
    assert cmd == ["py", "-m", "rnnjax", "eval", "--workdir", str(t.workdir), "--checkpoint",
                   "latest", "--config.decode.beam_size=1",
                   "--config.decode.length_penalty='none'", "--record"]
    for e in t.evaluations:  # every combination loads on the trial's config
        c = load_config(t.spec, t.cli_overrides() + t.eval_args(e))
        assert (c.decode.beam_size, c.decode.length_penalty, c.model.hidden, c.seed) == (
            e["decode.beam_size"], e["decode.length_penalty"], 8, 1)
    best = study_from_dict({**desc, "eval_grid": {"decode.alpha": [0.2]},
                            "eval_checkpoint": "best"}, name="t")
    assert expand(best, tmp_path)[0].eval_command({"decode.alpha": 0.2}, "py")[7] == "best"


def test_missing_base_and_file():
    with pytest.raises(ValueError, match="base"):
        study_from_dict({"grid": {"a.b": [1]}}, name="t")
    with pytest.raises(FileNotFoundError, match="base config"):
        study_from_dict({"base": "configs/nope.py"}, name="t")
    with pytest.raises(FileNotFoundError, match="experiments"):
        load_study("experiments/no_such_study.py")


def test_vmap_groups_split_on_everything_but_seed_and_lr(tmp_path):
    s = _study(grid={"model.cell": ["gru", "lstm"], "optim.lr": [1e-3, 3e-3]}, seeds=[0, 1])
    groups = vmap_groups(expand(s, tmp_path))
    assert [len(g) for g in groups] == [4, 4]
    assert {t.group["model.cell"] for t in groups[0]} == {"gru"}


# ---------------------------------------------------------------------------
# Running: two workers, a failing trial, resuming.
# ---------------------------------------------------------------------------
STUDY = '''
"""A tiny test study."""
def get_sweep(arg=None):
    return {
        "base": "configs/adding.py:smoke",
        "trials": [{"model.cell": "gru"}, {"model.cell": "rnn_tanh"},
                   {"model.no_such_key": 1}],
        "fixed": {"data.seq_len": 6, "train.steps": 2},
        "seeds": [0],
        "metrics": {"eval.mse": "min"},
    }
'''


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Runs the tiny study with 2 workers; then 'interrupts' one trial and runs it again."""
    tmp = tmp_path_factory.mktemp("sweep")
    study_file = tmp / "tiny.py"
    study_file.write_text(textwrap.dedent(STUDY))
    root = tmp / "root"
    logs: list[str] = []
    first = run_sweep(f"{study_file}", root, workers=2, log=logs.append)
    done = [t["name"] for t in first["trials"] if t["status"] == "done"]
    mtimes = {n: (root / n / "results.json").stat().st_mtime_ns for n in done}
    # An interrupted run: checkpoints and metrics but no results.json.
    interrupted = done[1]
    (root / interrupted / "results.json").unlink()
    assert trial_status(root / interrupted) == "started"
    second = run_sweep(f"{study_file}", root, workers=2, log=logs.append)
    return study_file, root, first, second, mtimes, interrupted


@pytest.mark.subprocess
def test_sweep_runs_trials_and_records_the_failure(swept):
    study_file, root, first, *_ = swept
    status = {t["overrides"].get("model.cell", "bad"): t["status"] for t in first["trials"]}
    assert status == {"gru": "done", "rnn_tanh": "done", "bad": "failed"}
    assert first["counts"] == {"done": 2, "failed": 1}
    for t in first["trials"]:
        wd = Path(t["workdir"])
        if t["status"] == "done":
            results = json.loads((wd / "results.json").read_text())
            assert results["status"] == "done" and results["step"] == 2
            config = json.loads((wd / "config.json").read_text())
            assert config["model"]["cell"] == t["overrides"]["model.cell"]
            assert config["data"]["seq_len"] == 6
        else:
            failed = json.loads((wd / "failed.json").read_text())
            assert failed["returncode"] != 0
            assert "no_such_key" in failed["stderr_tail"]
            assert trial_status(wd) == "failed"


@pytest.mark.subprocess
def test_second_run_skips_done_resumes_started_and_retries_failed(swept):
    _, root, first, second, mtimes, interrupted = swept
    ran = {t["name"]: t["ran"] for t in second["trials"]}
    skipped = [n for n in mtimes if n != interrupted]
    for name in skipped:
        assert ran[name] is False
        assert (root / name / "results.json").stat().st_mtime_ns == mtimes[name]
    # The interrupted trial ran again and resumed from its step-2 checkpoint: its
    # metrics hold steps 1 and 2 once (a restart would have logged them twice).
    assert ran[interrupted] is True
    assert trial_status(root / interrupted) == "done"
    steps = [r["step"] for r in read_metrics(root / interrupted) if r["split"] == "train"]
    assert steps == [1, 2]
    failed = [t for t in second["trials"] if t["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["ran"] is True
    assert second["counts"] == {"done": 2, "failed": 1}
    on_disk = json.loads((root / "sweep.json").read_text())
    assert [t["status"] for t in on_disk["trials"]] == ["done", "done", "failed"]


# ---------------------------------------------------------------------------
# Vmapped seeds.
# ---------------------------------------------------------------------------
def _tiny(seed, lr, cell="lstm"):
    return load_config(f"{ADDING}:smoke,T=7,cell={cell}",
                       {"seed": seed, "optim.lr": lr, "train.steps": 5, "model.hidden": 8,
                        "optim.warmup_steps": 2, "train.eval_every": 2})


def test_vmapped_seeds_equal_separate_runs(tmp_path, cell="lstm", lrs=(3e-3, 1e-2)):
    """Two seeds with two learning rates: data order, init, dropout keys and lr per member."""
    from rnnjax.train.trainer import train_and_evaluate, train_members

    seeds = [0, 1]
    sep = [train_and_evaluate(_tiny(s, lr, cell), tmp_path / f"sep{s}", progress=False)
           for s, lr in zip(seeds, lrs)]
    vm = train_members([_tiny(s, lr, cell) for s, lr in zip(seeds, lrs)],
                       [tmp_path / f"vm{s}" for s in seeds], progress=False)
    for s, a, b in zip(seeds, sep, vm):
        np.testing.assert_allclose(b["mse"], a["mse"], rtol=1e-5)
        ra = [r for r in read_metrics(tmp_path / f"sep{s}") if r["split"] == "train"]
        rb = [r for r in read_metrics(tmp_path / f"vm{s}") if r["split"] == "train"]
        assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 4, 5]
        for key in ("loss", "grad_norm", "param_norm", "update_norm", "lr"):
            np.testing.assert_allclose([r[key] for r in rb], [r[key] for r in ra],
                                       rtol=2e-5, atol=1e-7, err_msg=f"seed {s} {key}")
        ea = [r["mse"] for r in read_metrics(tmp_path / f"sep{s}") if r["split"] == "eval"]
        eb = [r["mse"] for r in read_metrics(tmp_path / f"vm{s}") if r["split"] == "eval"]
        np.testing.assert_allclose(eb, ea, rtol=1e-5)
        res = json.loads((tmp_path / f"vm{s}" / "results.json").read_text())
        assert res["status"] == "done" and res["mode"] == "vmap"
        # Each member keeps checkpoints as a single run does: every checkpoint_every
        # steps (smoke: 2), the last N plus the best.
        steps = sorted(int(p.name) for p in (tmp_path / f"vm{s}" / "checkpoints").iterdir()
                       if p.name.isdigit())
        assert 5 in steps and len(steps) >= 2
    # Different seeds really are different runs.
    assert not math.isclose(vm[0]["mse"], vm[1]["mse"])
    # The final checkpoint restores into the trainer's own state tree (eval, diagnose).
    from rnnjax.inference import run_eval

    again = run_eval(tmp_path / "vm1", "latest")
    assert again["checkpoint_step"] == 5
    np.testing.assert_allclose(again["mse"], vm[1]["mse"], rtol=1e-6)


def test_vmap_rejects_members_that_differ_in_more_than_seed_and_lr(tmp_path):
    from rnnjax.train.trainer import train_members

    with pytest.raises(ValueError, match="model.hidden"):
        train_members([_tiny(0, 1e-3), load_config(f"{ADDING}:smoke,T=7",
                                                   {"seed": 1, "model.hidden": 4})],
                      [tmp_path / "a", tmp_path / "b"])


def test_vmap_records_a_diverged_member_and_finishes_the_others(tmp_path):
    from rnnjax.train.trainer import train_members

    cfgs = [load_config(f"{ADDING}:smoke,T=7,cell=rnn_relu",
                        {"seed": s, "optim.lr": lr, "optim.clip_value": 1e30, "optim.name": "sgd",
                         "optim.warmup_steps": 0, "optim.schedule": "constant",
                         "train.steps": 4})
            for s, lr in [(0, 1e-3), (1, 1e30)]]
    out = train_members(cfgs, [tmp_path / "ok", tmp_path / "bad"], progress=False)
    assert out[0] is not None and out[1] is None
    assert trial_status(tmp_path / "ok") == "done"
    assert trial_status(tmp_path / "bad") == "failed"
    failed = json.loads((tmp_path / "bad" / "failed.json").read_text())
    assert "non-finite" in failed["error"] and failed["step"] >= 1
    # The diverged member's checkpoints hold only finite steps before the failure.
    bad_steps = [int(p.name) for p in (tmp_path / "bad" / "checkpoints").iterdir()
                 if p.name.isdigit()]
    assert all(st < failed["step"] for st in bad_steps)


@pytest.mark.subprocess
def test_vmapped_group_killed_and_rerun_resumes_to_the_same_numbers(tmp_path):
    """A vmapped ``rnnjax train`` of 2 members, SIGKILLed after a checkpoint and re-run,
    ends with the same metrics, bit for bit, as an uninterrupted group."""
    import signal

    from _helpers import checkpoint_steps, run_rnnjax, start_rnnjax, wait_for

    common = ["--config", "configs/adding.py:smoke,T=7", "--config.train.steps=30",
              "--config.train.checkpoint_every=5", "--config.train.eval_every=10",
              "--no-progress"]
    members = ["--member", "seed=0", "--member", "seed=1,optim.lr=0.003"]

    def workdirs(tag):
        return [tmp_path / f"{tag}0", tmp_path / f"{tag}1"]

    def args(tag):
        a, b = workdirs(tag)
        return ["train", *common, "--workdir", str(a), "--workdir", str(b), *members]

    proc = run_rnnjax(*args("full"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = start_rnnjax(*args("kill"), log=tmp_path / "kill.log")
    try:
        wait_for(lambda: all(any(s >= 10 for s in checkpoint_steps(w))
                             for w in workdirs("kill")), proc, timeout=300)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert trial_status(workdirs("kill")[0]) == "started"
    again = run_rnnjax(*args("kill"), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step" in again.stderr
    for full, killed in zip(workdirs("full"), workdirs("kill")):
        a = [r for r in read_metrics(full) if r["split"] in ("train", "eval")]
        b = [r for r in read_metrics(killed) if r["split"] in ("train", "eval")]
        # Each step once (resume truncates what the killed run logged past its checkpoint).
        assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
        for ra, rb in zip(a, b):
            for k in ("loss", "grad_norm", "mse"):
                if k in ra:
                    assert ra[k] == rb[k], (full.name, ra["split"], ra["step"], k)
        ra = json.loads((full / "results.json").read_text())["eval"]
        rb = json.loads((killed / "results.json").read_text())["eval"]
        assert ra["mse"] == rb["mse"]


@pytest.mark.subprocess
def test_vmapped_sweep_runs_a_seed_group_in_one_process(tmp_path):
    study_file = tmp_path / "seeds.py"
    study_file.write_text(textwrap.dedent('''
        def get_sweep(arg=None):
            return {"base": "configs/adding.py:smoke", "fixed": {"data.seq_len": 5},
                    "seeds": [0, 1]}
    '''))
    out = run_sweep(str(study_file), tmp_path / "root", vmap_seeds=True, log=lambda s: None)
    assert out["counts"] == {"done": 2}
    first = Path(out["trials"][0]["workdir"])
    # One `rnnjax train` process trained both (its stderr names both workdirs).
    err = (first / "stderr.log").read_text()
    assert all(t["workdir"] in err for t in out["trials"])
    assert not (Path(out["trials"][1]["workdir"]) / "stderr.log").exists()
    for t in out["trials"]:
        assert t.get("vmapped") is True
        res = json.loads((Path(t["workdir"]) / "results.json").read_text())
        assert res["mode"] == "vmap" and res["step"] == 4


def test_sweep_group_command_is_rnnjax_train_with_one_member_per_trial(tmp_path):
    from rnnjax.sweeps.runner import group_command
    from rnnjax.sweeps.study import VMAP_KEYS
    from rnnjax.train.trainer import MEMBER_KEYS

    assert tuple(VMAP_KEYS) == tuple(MEMBER_KEYS)
    s = _study(base="configs/adding.py:smoke", grid={"optim.lr": [0.1, 0.2]}, seeds=[0, 1],
               fixed={"train.steps": 3})
    trials = expand(s, tmp_path)
    (group,) = vmap_groups(trials)
    cmd = group_command(group, python="py")
    assert cmd[:4] == ["py", "-m", "rnnjax", "train"]
    assert cmd.count("--workdir") == cmd.count("--member") == 4
    assert "--config.train.steps=3" in cmd
    members = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--member"]
    assert members == ["optim.lr=0.1,seed=0", "optim.lr=0.1,seed=1", "optim.lr=0.2,seed=0",
                       "optim.lr=0.2,seed=1"] or all("seed=" in m for m in members)


def test_same_program_check_sees_a_seed_inside_the_step():
    import jax
    import jax.numpy as jnp

    from rnnjax.train.trainer import VmapUnsupported, _check_same_program

    def noisy(seed):  # a loss that draws its noise from PRNGKey(config.seed)
        return lambda x: x + jax.random.normal(jax.random.PRNGKey(seed), x.shape)

    x = (jnp.zeros(3),)
    _check_same_program([lambda x: 2 * x, lambda x: 2 * x], x, "step")
    _check_same_program([noisy(3), noisy(3)], x, "step")
    with pytest.raises(VmapUnsupported, match="member 1's step"):
        _check_same_program([noisy(3), noisy(4)], x, "step")


@pytest.mark.slow
def test_vmap_refuses_a_task_whose_step_reads_the_seed(tmp_path):
    """Scheduled sampling draws coins from PRNGKey(config.seed): one program cannot serve
    two seeds, so the vmapped path says so before touching the workdirs (train_members
    then trains them one by one)."""
    from rnnjax.train.trainer import VmapUnsupported, _train
    from rnnjax.train.workdir import Workdir

    reverse = str(REPO / "configs" / "reverse.py")
    cfgs = [load_config(f"{reverse}:smoke,objective=scheduled_sampling", [f"seed={s}"])
            for s in (0, 1)]
    with pytest.raises(VmapUnsupported, match="seed inside the step"):
        _train(cfgs, [Workdir(tmp_path / "a"), Workdir(tmp_path / "b")], progress=False,
               hooks=())
    assert not (tmp_path / "a" / "config.json").exists()


# ---------------------------------------------------------------------------
# Evaluation-only axes: one trained run per configuration x seed, evaluated many ways.
# ---------------------------------------------------------------------------
EVAL_STUDY = '''
def get_sweep(arg=None):
    return {{
        "base": "configs/reverse.py:smoke",
        "seeds": [0, 1],
        "eval_grid": {{"decode.beam_size": [3], "decode.length_penalty": {penalties}}},
        "metrics": {{"eval.beam_exact_match": "max", "eval.loss": "min"}},
    }}
'''


@pytest.mark.subprocess
def test_eval_grid_trains_once_per_seed_reports_rnnjax_eval_and_resumes(tmp_path):
    """Vmapped seeds on the local pool, then the study extended with a bad value on the
    SLURM executor (submitit's local cluster): the trained runs are reused, each
    evaluation is `rnnjax eval` with the combination's overrides, done evaluations are
    skipped and a failing one is recorded and reported as failed."""
    from _helpers import checkpoint_steps

    from rnnjax.sweeps.report import report
    from rnnjax.train.workdir import Workdir

    study_file = tmp_path / "evals.py"
    study_file.write_text(textwrap.dedent(EVAL_STUDY.format(penalties=["none", "gnmt"])))
    root = tmp_path / "root"
    first = run_sweep(str(study_file), root, vmap_seeds=True, log=lambda s: None)
    assert first["counts"] == {"done": 2} and first["eval_counts"] == {"done": 4}
    trials = expand(load_study(str(study_file)), root)
    # Trained once per seed: one vmapped `rnnjax train` process for both seeds, one run
    # per workdir (steps logged once, the smoke's checkpoints 2 and 4), no other workdirs.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        t.name for t in trials)
    log0 = (trials[0].workdir / "stderr.log").read_text()
    assert log0.count("rnnjax: training") == 1 and str(trials[1].workdir) in log0
    for t in trials:
        assert checkpoint_steps(t.workdir) == [2, 4]
        assert [r["step"] for r in read_metrics(t.workdir) if r["split"] == "train"] == \
            [1, 2, 3, 4]
        assert len(list((t.workdir / "evals").iterdir())) == 2
    # Each row is `rnnjax eval` with the combination's overrides on the trained workdir
    # (here re-run in-process), seeds aggregated.
    from rnnjax.inference import run_eval

    out = report(str(study_file), root, plots=False)
    rows = {r["overrides"]["decode.length_penalty"]: r for r in out["rows"]}
    assert list(rows) == ["none", "gnmt"]
    for lp, row in rows.items():
        assert row["overrides"] == {"decode.beam_size": 3, "decode.length_penalty": lp}
        assert (row["done"], row["failed"], row["seeds"]) == (2, 0, 2)
        direct = [run_eval(t.workdir, "latest", ["decode.beam_size=3",
                                                 f"decode.length_penalty={lp}"])
                  for t in trials]
        for metric in ("eval.beam_exact_match", "eval.loss"):
            got = [d[metric.split(".")[1]] for d in direct]
            assert row["metrics"][metric]["values"] == pytest.approx(got, rel=1e-6)
            assert row["metrics"][metric]["mean"] == pytest.approx(np.mean(got), rel=1e-6)
    assert out["markdown"].splitlines()[0].startswith(
        "| beam_size | length_penalty | eval.beam_exact_match ↑")
    # Resume: nothing left to do, nothing runs.
    mtimes = {p: p.stat().st_mtime_ns for t in trials for p in (t.workdir / "evals").iterdir()}
    again = run_sweep(str(study_file), root, vmap_seeds=True, log=lambda s: None)
    assert [t["ran"] for t in again["trials"]] == [False, False]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # Extended with a value `rnnjax eval` refuses, on another executor: the training is
    # not repeated, only the new evaluations run, and they are recorded as failed.
    study_file.write_text(textwrap.dedent(EVAL_STUDY.format(
        penalties=["none", "gnmt", "shortest"])))
    results_mtime = [(t.workdir / "results.json").stat().st_mtime_ns for t in trials]
    third = run_sweep(str(study_file), root, executor="slurm", workers=2,
                      executor_options={"cluster": "local", "time_min": 10},
                      log=lambda s: None)
    assert third["counts"] == {"done": 2}
    assert third["eval_counts"] == {"done": 4, "failed": 2}
    assert [(t.workdir / "results.json").stat().st_mtime_ns for t in trials] == results_mtime
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # done ones not re-run
    for t, row in zip(trials, third["trials"]):
        assert checkpoint_steps(t.workdir) == [2, 4]
        assert row["evals"] == {"done": 2, "failed": 1, "pending": 0}
        (err,) = row["eval_errors"]
        assert "shortest" in err["error"] and "length_penalty=shortest" in err["eval"]
        name = Workdir.eval_name("latest", ["decode.beam_size=3",
                                            "decode.length_penalty=shortest"])
        assert Workdir(t.workdir).read_eval(name)["status"] == "failed"
    out = report(str(study_file), root, plots=False)
    bad = next(r for r in out["rows"] if r["overrides"]["decode.length_penalty"] == "shortest")
    assert (bad["done"], bad["failed"]) == (0, 2) and len(bad["errors"]) == 2
    assert all("length_penalty=shortest" in label for label, _ in bad["errors"])


def test_sweep_command_fails_naming_the_failed_evaluations(monkeypatch, capsys):
    """`rnnjax sweep` exits 1 when an evaluation failed, as for a failed trial, and names
    the trial, the evaluation's record and its error."""
    import rnnjax.sweeps.runner as runner
    from rnnjax.cli import main

    summary = {"root": "r", "counts": {"done": 1}, "eval_counts": {"done": 1, "failed": 1},
               "trials": [{"name": "seed=0-abc", "status": "done", "workdir": "r/seed=0-abc",
                           "eval_errors": [{"eval": "latest-decode.beam_size=9-1234abcd",
                                            "error": "ValueError: too wide"}]}]}
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: summary)
    assert main(["sweep", "experiments/decoding.py"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"root": "r", "counts": {"done": 1},
                               "eval_counts": {"done": 1, "failed": 1}}
    assert "1 evaluations failed" in err and "seed=0-abc latest-decode.beam_size=9-1234abcd: " \
        "ValueError: too wide" in err
