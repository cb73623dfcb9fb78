"""The run lifecycle under mistakes and faults (issue 15): each test reproduces one problem.

A run never lies (no "done" for a wrong result), never blocks itself (a failed start
leaves no record that refuses the corrected command; a killed run's lock dies with it)
and never loses work (Ctrl-C saves; an unreadable checkpoint falls back, nothing is
deleted). What the guarantees are is written in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import (
    CONFIGS,
    ROOT,
    checkpoint_steps,
    config,
    rows,
    run_rnnjax,
    start_rnnjax,
    train,
    wait_for,
)

from rnnjax.train.workdir import Workdir, WorkdirLocked


def _files(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for p in sorted(workdir.rglob("*")) if p.is_file()}


# 1. A failed start must not block its own workdir.
@pytest.mark.parametrize("bad", [
    ("char_lm.py:smoke", ["data.path=/no/such/file.txt"]),
    ("adding.py:smoke,cell=nope", []),
    ("adding.py:smoke", ["model.hidden=-3"]),
    ("adding.py:smoke", ["model.cell_kwargs.no_such_option=1"]),
])
def test_a_failed_start_leaves_no_config_behind(tmp_path, bad):
    spec, overrides = bad
    with pytest.raises((ValueError, FileNotFoundError, OSError)):
        train(config(spec, *overrides), tmp_path)
    assert not (tmp_path / "config.json").exists()
    # The corrected command runs in the same workdir.
    good = spec.replace("cell=nope", "cell=gru")
    assert train(config(good), tmp_path)
    assert Workdir(tmp_path).status() == "done"


# 2. Asking for fewer steps than the checkpoint holds is an error; results stay true.
def test_a_run_cannot_be_shortened(tmp_path):
    train(config("adding.py:smoke", "train.steps=6"), tmp_path)
    before = (tmp_path / "results.json").read_text(), (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="cannot be shortened"):
        train(config("adding.py:smoke", "train.steps=3"), tmp_path)
    assert ((tmp_path / "results.json").read_text(),
            (tmp_path / "config.json").read_text()) == before
    # More steps extend the run, as before.
    train(config("adding.py:smoke", "train.steps=8"), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 8


# 3. One run per workdir; a dead holder's lock does not block.
def test_a_second_run_on_a_locked_workdir_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from rnnjax.train.workdir import Workdir
            with Workdir({str(tmp_path)!r}).locked():
                print("locked", flush=True)
                time.sleep(120)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
            train(config("adding.py:smoke"), tmp_path)
        assert not (tmp_path / "config.json").exists()
        holder.send_signal(signal.SIGKILL)  # the holder dies without unlocking
        holder.wait(timeout=30)
        assert train(config("adding.py:smoke"), tmp_path)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_two_processes_on_one_workdir_one_is_refused(tmp_path):
    """In-process: a lock held by this process refuses a nested attempt too."""
    wd = Workdir(tmp_path)
    with wd.locked(), pytest.raises(WorkdirLocked, match="in use"), wd.locked():
        pass


# 4. Counts and sizes are validated, one clear error each.
@pytest.mark.parametrize("override,key", [
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.eval_every=0", "train.eval_every"),
    ("train.checkpoint_every=0", "train.checkpoint_every"), ("model.hidden=0", "model.hidden"),
    ("model.num_layers=0", "model.num_layers"), ("data.seq_len=0", "data.seq_len"),
    ("model.dropout=1.5", "model.dropout"), ("optim.lr=0", "optim.lr"),
])
def test_bad_counts_are_refused_before_anything_is_built(tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
        train(config("adding.py:smoke", override), tmp_path)
    assert "\n" not in str(e.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# 5 and 6. Ctrl-C saves, says so, exits 130; the resumed run logs each step once.
@pytest.mark.subprocess
def test_ctrl_c_saves_and_the_resumed_run_logs_each_step_once(tmp_path):
    wd = tmp_path / "run"
    args = ["train", "--config", "configs/adding.py:smoke,T=7", "--config.train.steps=400",
            "--config.train.checkpoint_every=50", "--config.train.eval_every=1000",
            "--workdir", str(wd), "--no-progress"]
    proc = start_rnnjax(*args, log=tmp_path / "log")
    try:
        wait_for(lambda: any(s >= 50 for s in checkpoint_steps(wd)), proc, timeout=300)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "log.err").read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: saved a checkpoint at step" in err
    assert "Traceback" not in err
    assert "did not provide metrics" not in err  # Orbax's per-save noise is gone (item 17)
    saved = max(checkpoint_steps(wd))
    assert saved >= 50 and saved in checkpoint_steps(wd)
    longer = [f"--config.train.steps={saved + 20}" if a.startswith("--config.train.steps=")
              else a for a in args]
    again = run_rnnjax(*longer, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from step {saved}" in again.stderr
    steps = [r["step"] for r in rows(wd, "train")]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 20


# 8. A run that diverged but stayed finite says so.
def test_a_diverged_run_is_not_reported_as_fine(tmp_path):
    cfg = config("adding.py:smoke,T=10", "optim.lr=1000.0", "train.steps=20",
                 "train.eval_every=5", "optim.clip=none")
    try:
        final = train(cfg, tmp_path)
    except FloatingPointError:
        pytest.skip("this setting went non-finite (the NaN stop covers it)")
    res = json.loads((tmp_path / "results.json").read_text())
    assert final["mse"] > 2 * final["baseline_mse"]
    assert res["warnings"] and "far worse" in res["warnings"][0]


def test_a_run_that_learns_has_no_warnings(tmp_path):
    train(config("adding.py:smoke,T=10", "train.steps=120", "train.eval_every=40",
                 "optim.lr=0.01"), tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["eval"]["mse"] < 2 * res["eval"]["baseline_mse"]
    assert "warnings" not in res


# 9. An unreadable newest checkpoint: one line, fall back, delete nothing.
def test_an_unreadable_newest_checkpoint_falls_back_and_keeps_the_files(tmp_path, caplog):
    train(config("adding.py:smoke", "train.steps=6", "train.keep_checkpoints=3"), tmp_path)
    ck = tmp_path / "checkpoints"
    newest = max(checkpoint_steps(tmp_path))
    for f in (ck / str(newest)).rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage")
    before = {p.name for p in ck.iterdir()}
    train(config("adding.py:smoke", "train.steps=8", "train.keep_checkpoints=3"), tmp_path)
    after = {p.name for p in ck.iterdir()}
    moved = [n for n in after if n.startswith(f"{newest}.unreadable")]
    assert len(moved) == 1  # moved aside, not deleted
    assert any((ck / moved[0]).rglob("*"))
    assert str(newest) in before
    assert any("could not be read" in r.getMessage() and "falling back" in r.getMessage()
               for r in caplog.records)
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 8


# 10. A finished run only reports: nothing is written.
def test_a_finished_run_reports_without_writing(tmp_path):
    first = train(config("adding.py:smoke"), tmp_path)
    files = _files(tmp_path)
    again = train(config("adding.py:smoke"), tmp_path)
    assert again == json.loads(json.dumps(first, default=float))
    assert _files(tmp_path) == files


# 11. A config with a syntax error: one line with the file and the line.
def test_a_config_syntax_error_is_one_line(tmp_path):
    from rnnjax.configlib import load_config

    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None):\n    return (\n")
    with pytest.raises(ValueError, match=r"bad\.py, line \d+") as e:
        load_config(str(bad))
    assert "\n" not in str(e.value)


# 12. --version, overrides in train --help, the resolved config without training.
@pytest.mark.subprocess
def test_version_help_and_config_commands():
    v = run_rnnjax("--version")
    assert v.returncode == 0 and v.stdout.startswith("rnnjax ")
    h = run_rnnjax("train", "--help")
    assert h.returncode == 0 and "--config.a.b=value" in h.stdout
    c = run_rnnjax("config", "--config", "configs/adding.py:T=50", "--config.optim.lr=0.01")
    assert c.returncode == 0, c.stderr
    cfg = json.loads(c.stdout)
    assert cfg["data"]["seq_len"] == 50 and cfg["optim"]["lr"] == 0.01
    bad = run_rnnjax("config", "--config.train.steps=0")
    assert bad.returncode == 2 and "train.steps" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# 13. A sweep with a failed trial exits non-zero and names the cause and the log.
@pytest.mark.subprocess
def test_a_sweep_with_a_failed_trial_exits_non_zero_naming_it(tmp_path):
    study = tmp_path / "s.py"
    study.write_text(textwrap.dedent("""
        def get_sweep(arg=None):
            return {"base": "configs/adding.py:smoke",
                    "trials": [{"model.hidden": 4}, {"model.cell": "nope"}], "seeds": [0]}
    """))
    proc = run_rnnjax("sweep", str(study), "--root", str(tmp_path / "root"), timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "1 of 2 trials failed" in proc.stderr
    assert "unknown cell 'nope'" in proc.stderr
    assert "stderr.log" in proc.stderr


# 14. A report of the full study on a smoke root refuses instead of overwriting.
def test_report_refuses_the_other_variant(tmp_path):
    from rnnjax.sweeps import report, run_sweep

    study = tmp_path / "s.py"
    study.write_text(textwrap.dedent("""
        def get_sweep(arg=None):
            smoke = "smoke" in (arg or "")
            return {"base": "configs/adding.py:smoke", "seeds": [0],
                    "grid": {"model.hidden": [4] if smoke else [4, 8]}}
    """))
    root = tmp_path / "root"
    run_sweep(str(study), root, smoke=True, log=lambda s: None)
    report(str(study), root, smoke=True)
    table = (root / "report" / "table.md").read_text()
    with pytest.raises(ValueError, match="--smoke"):
        report(str(study), root)
    assert (root / "report" / "table.md").read_text() == table


# 18. Offline fetch: the message alone, no traceback.
@pytest.mark.subprocess
def test_offline_fetch_prints_the_message_alone(tmp_path):
    proc = run_rnnjax("fetch", "tiny_shakespeare", "--cache-dir", str(tmp_path),
                      RNNJAX_OFFLINE="1")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "karpathy/char-rnn" in proc.stderr and str(tmp_path) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) < 10


# 19. The default job and the shipped configs work from a wheel, outside the checkout.
@pytest.mark.subprocess
def test_the_default_job_runs_from_a_wheel(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("rnnjax-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True,
                          timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import rnnjax; print(rnnjax.__file__)"],
                           cwd=away, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site)), where
    run = subprocess.run([sys.executable, "-m", "rnnjax", "train", "--config.train.steps=3",
                          "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
                          "--config.train.plots=False", "--no-progress"],
                         cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((away / "runs" / "default" / "results.json").read_text())["step"] == 3
    smoke = subprocess.run([sys.executable, "-m", "rnnjax", "config", "--config",
                            "configs/char_lm.py:smoke"], cwd=away, env=env,
                           capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0, smoke.stderr[-2000:]


# 20. tiny_shakespeare is pinned to the digest of its published file.
def test_tiny_shakespeare_is_pinned(tmp_path):
    from rnnjax.data.download import REGISTRY, ChecksumError, fetch

    spec = REGISTRY["tiny_shakespeare"]
    assert spec.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    # A cached file with other bytes is refused.
    folder = tmp_path / "tiny_shakespeare"
    folder.mkdir()
    (folder / spec.filename).write_text("not shakespeare")
    with pytest.raises(ChecksumError):
        fetch("tiny_shakespeare", tmp_path, offline=True)


def test_configs_resolve_from_the_package_when_not_in_the_cwd(tmp_path, monkeypatch):
    from rnnjax.configlib import configs_dir, load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/adding.py:smoke")
    assert cfg.train.steps == 4
    assert (configs_dir() / "adding.py").samefile(CONFIGS / "adding.py")


# 7. A classification set with one class is refused; a class missing from validation warns;
# a file too small to split says so.
def test_a_one_class_dataset_is_refused(tmp_path):
    data = tmp_path / "one.tsv"
    data.write_text("".join(f"ham\tmessage number {i}\n" for i in range(40)))
    with pytest.raises(ValueError, match="one class .*'ham'.*at least 2 classes"):
        train(config("text_classify.py:smoke", f"data.path={data}"), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_one_line_file_says_too_few_examples(tmp_path):
    data = tmp_path / "tiny.tsv"
    data.write_text("ham\thello there\n")
    with pytest.raises(ValueError, match="too few examples \\(1\\)"):
        train(config("text_classify.py:smoke", f"data.path={data}"), tmp_path / "run")


def test_a_class_missing_from_validation_warns(tmp_path, caplog):
    from rnnjax.tasks.classification import _check_classes

    with caplog.at_level("WARNING", logger="rnnjax"):
        _check_classes([0, 1, 2, 0], [0, 1], ["a", "b", "c"], "x.tsv")
    assert "no example of class(es) ['c']" in caplog.text


# 10. diagnose on a workdir that cannot be written: the diagnosis, and what was not written.
def test_diagnose_on_a_read_only_workdir_reports_instead_of_crashing(tmp_path, monkeypatch):
    from rnnjax.diagnostics import diagnose_workdir

    train(config("adding.py:smoke,T=6"), tmp_path)
    real = Path.write_text

    def refuse(self, *a, **k):
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", refuse)
    result = diagnose_workdir(tmp_path, which="latest")
    assert result["grad_summary"] and "Permission denied" in result["not_written"]
    assert not (tmp_path / "diagnostics.json").exists()


def test_a_run_recorded_before_new_config_keys_still_loads_and_reports(tmp_path):
    """config.json of an older rnnjax lacks keys added since (with defaults that keep the
    old behaviour): eval, sample and a re-run of the finished run still work."""
    from rnnjax.inference import run_eval

    first = train(config("adding.py:smoke"), tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())
    for key in ("arch", "embed_dropout", "ar_alpha", "conv_kernel"):
        recorded["model"].pop(key, None)
    recorded["train"].pop("prefetch", None)
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert run_eval(tmp_path, "latest")["mse"] == pytest.approx(first["mse"], rel=1e-6)
    assert train(config("adding.py:smoke"), tmp_path)["mse"] == pytest.approx(first["mse"])
