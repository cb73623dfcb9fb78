"""Executors (local, Ray, SLURM through submitit) and the Optuna search, on tiny studies.

Each engine runs the same 3-trial study (one trial fails: ``model.cell=nope``) and
must keep the runner's guarantees: statuses, failure records with stderr, sweep.json,
and resume (a trial with a checkpoint but no results resumes, not restarts). The
optional engines skip with a reason when they are not installed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from rnnjax.sweeps import run_sweep, study_from_dict, trial_status
from rnnjax.sweeps.executors import EXECUTORS, get_executor
from rnnjax.train.metrics import read_metrics

REASON = "{} not installed: pip install 'rnnjax[cluster]' to test the {} executor"

STUDY = '''
def get_sweep(arg=None):
    return {
        "base": "configs/adding.py:smoke",
        "trials": [{"model.cell": "gru"}, {"model.cell": "rnn_tanh"}, {"model.cell": "nope"}],
        "fixed": {"data.seq_len": 6, "train.steps": 2},
        "seeds": [0],
        "metrics": {"eval.mse": "min"},
    }
'''


def _study_file(tmp: Path) -> Path:
    path = tmp / "tiny.py"
    path.write_text(textwrap.dedent(STUDY))
    return path


def _check_first_run(out: dict) -> None:
    status = {t["overrides"]["model.cell"]: t["status"] for t in out["trials"]}
    assert status == {"gru": "done", "rnn_tanh": "done", "nope": "failed"}
    assert out["counts"] == {"done": 2, "failed": 1}
    on_disk = json.loads((Path(out["root"]) / "sweep.json").read_text())
    assert on_disk["counts"] == {"done": 2, "failed": 1}
    assert [t["status"] for t in on_disk["trials"]] == ["done", "done", "failed"]
    bad = next(t for t in out["trials"] if t["status"] == "failed")
    failed = json.loads((Path(bad["workdir"]) / "failed.json").read_text())
    assert failed["returncode"] != 0 and "nope" in failed["stderr_tail"]
    assert failed["stderr_path"] == str(Path(bad["workdir"]) / "stderr.log")
    assert "nope" in bad["error"]
    for t in out["trials"][:2]:
        res = json.loads((Path(t["workdir"]) / "results.json").read_text())
        assert res["status"] == "done" and res["step"] == 2


def _interrupt_and_resume(study: Path, out: dict, **kw) -> None:
    """Deletes a done trial's results (a run killed after its step-2 checkpoint) and
    runs the sweep again: that trial resumes, the other done one is skipped."""
    root = Path(out["root"])
    done = [t["name"] for t in out["trials"] if t["status"] == "done"]
    kept_mtime = (root / done[0] / "results.json").stat().st_mtime_ns
    (root / done[1] / "results.json").unlink()
    assert trial_status(root / done[1]) == "started"
    again = run_sweep(str(study), root, log=lambda s: None, **kw)
    ran = {t["name"]: t["ran"] for t in again["trials"]}
    assert ran[done[0]] is False
    assert (root / done[0] / "results.json").stat().st_mtime_ns == kept_mtime
    assert ran[done[1]] is True and trial_status(root / done[1]) == "done"
    # Resumed from the step-2 checkpoint: each step logged once (a restart logs twice).
    steps = [r["step"] for r in read_metrics(root / done[1]) if r["split"] == "train"]
    assert steps == [1, 2]
    assert again["counts"] == {"done": 2, "failed": 1}


# ---------------------------------------------------------------------------
# The registry and the optional engines' messages (no processes).
# ---------------------------------------------------------------------------
def test_executors_are_found_by_name_and_an_unknown_name_lists_them():
    assert set(EXECUTORS) >= {"local", "ray", "slurm"}
    with pytest.raises(ValueError, match=r"unknown executor 'k8s'; known: \['local', 'ray'"):
        get_executor("k8s")
    with pytest.raises(ValueError, match="unknown options"):
        get_executor("ray", adress="x")


@pytest.mark.parametrize("name, module", [("ray", "ray"), ("slurm", "submitit")])
def test_a_missing_engine_names_the_extra(name, module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    ex = get_executor(name, **({"folder": tmp_path} if name == "slurm" else {}))
    with pytest.raises(ImportError, match=r"pip install 'rnnjax\[cluster\]'"):
        ex.start()


def test_a_missing_optuna_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    study = study_from_dict({"base": "configs/adding.py:smoke", "optuna": {
        "n_trials": 2, "space": {"optim.lr": ("loguniform", 1e-3, 1e-2)},
        "metric": "eval.mse"}}, name="s")
    with pytest.raises(ImportError, match=r"optuna study needs the 'optuna'.*rnnjax\[cluster\]"):
        run_sweep(study, tmp_path, log=lambda s: None)


def test_sweep_json_is_rewritten_at_most_every_interval(tmp_path):
    from rnnjax.sweeps.runner import _Book
    from rnnjax.sweeps.study import expand

    study = study_from_dict({"base": "configs/adding.py:smoke", "seeds": list(range(50))},
                            name="s")
    trials = expand(study, tmp_path)
    book = _Book(study, tmp_path, trials, min_interval=3600)
    for t in trials:
        book.update(t.name, status="running")
        book.update(t.name, status="done")
    assert book.writes == 1  # the first write only: 100 changes, no rewrite
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"] == {"pending": 50}
    book.flush()
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"] == {"done": 50}


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.subprocess
def test_a_jobs_follow_up_commands_run_after_it_in_order_each_whatever_the_others_return(
        tmp_path):
    """A trial's evaluations (``Job.then``) run after its training, in the same job,
    with their own return codes; none runs when the training failed or time ran out."""
    from rnnjax.sweeps.executors import Job, run_job

    out, err = tmp_path / "out.log", tmp_path / "err.log"
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2]); sys.exit(int(sys.argv[3]))"
    trace = tmp_path / "trace"
    then = [[*_py(write), str(trace), tag, rc] for tag, rc in (("a", "0"), ("b", "3"),
                                                               ("c", "0"))]
    ok = run_job(Job("k", [*_py(write), str(trace), "T", "0"], out, err, then=then))
    assert (ok.returncode, ok.then_returncodes, trace.read_text()) == (0, [0, 3, 0], "Tabc")
    assert err.read_text().count("[rnnjax sweep]") == 3  # each follow-up named in the log
    trace.unlink()
    bad = run_job(Job("k", [*_py(write), str(trace), "T", "1"], out, err, then=then))
    assert (bad.returncode, bad.then_returncodes, trace.read_text()) == (1, [None] * 3, "T")
    # One timeout for the whole job: the follow-up that runs past it is stopped, the
    # rest never start.
    trace.unlink()
    slow = [*_py("import time; time.sleep(30)")]
    late = run_job(Job("k", [*_py(write), str(trace), "T", "0"], out, err, timeout=5,
                       then=[slow, then[0]]))
    assert late.returncode == 0 and late.timed_out
    assert late.then_returncodes[0] != 0 and late.then_returncodes[1] is None
    assert trace.read_text() == "T"


# ---------------------------------------------------------------------------
# Ray: one local instance for the module.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason=REASON.format("ray", "ray"))
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.subprocess
def test_ray_runs_a_jobs_follow_up_commands_in_its_task(ray_session, tmp_path):
    """A trial's evaluations travel with its Job to the Ray task and come back in its
    Outcome (the sweep's eval grid on Ray; SLURM is run end to end in test_sweep.py)."""
    from rnnjax.sweeps.executors import Job

    job = Job("k", _py("print('train')"), tmp_path / "out.log", tmp_path / "err.log",
              then=[_py("print('eval 1')"), _py("import sys; sys.exit(3)")])
    with get_executor("ray") as ex:
        (future,) = ex.submit([job], lambda j: None)
        out = future.result(timeout=300)
    assert (out.returncode, out.then_returncodes) == (0, [0, 3])
    assert (tmp_path / "out.log").read_text().split() == ["train", "eval", "1"]


@pytest.mark.subprocess
def test_ray_runs_the_study_records_the_failure_and_resumes(ray_session, tmp_path):
    study = _study_file(tmp_path)
    out = run_sweep(str(study), tmp_path / "root", executor="ray", log=lambda s: None)
    _check_first_run(out)
    assert ray_session.is_initialized()  # a session it did not start is left running
    _interrupt_and_resume(study, out, executor="ray")


# ---------------------------------------------------------------------------
# SLURM through submitit: its local executor (one process per job, as sbatch would).
# ---------------------------------------------------------------------------
@pytest.mark.subprocess
def test_slurm_through_submitit_locally_runs_the_study_and_resumes(tmp_path):
    pytest.importorskip("submitit", reason=REASON.format("submitit", "slurm"))
    study = _study_file(tmp_path)
    opts = {"cluster": "local", "time_min": 10}
    out = run_sweep(str(study), tmp_path / "root", executor="slurm", workers=3,
                    executor_options=opts, log=lambda s: None)
    _check_first_run(out)
    assert (tmp_path / "root" / ".submitit").is_dir()  # submitit's own logs and pickles
    _interrupt_and_resume(study, out, executor="slurm", workers=3, executor_options=opts)


# ---------------------------------------------------------------------------
# Optuna.
# ---------------------------------------------------------------------------
def _search(**optuna):
    return {"base": "configs/adding.py:smoke", "fixed": {"data.seq_len": 6},
            "optuna": {"space": {"optim.lr": ("loguniform", 1e-3, 1e-2),
                                 "model.hidden": ("choice", [4, 8])},
                       "metric": "eval.mse", **optuna},
            "metrics": {"eval.mse": "min"}}


@pytest.mark.subprocess
def test_optuna_search_runs_resumes_and_reports(tmp_path):
    optuna = pytest.importorskip("optuna", reason=REASON.format("optuna", "optuna"))
    from rnnjax.sweeps.report import report

    desc = _search(n_trials=2, pruner="none")
    root = tmp_path / "root"
    study = study_from_dict(desc, name="search")
    out = run_sweep(study, root, workers=2, log=lambda s: None)
    assert out["counts"] == {"done": 2} and out["kind"] == "optuna"
    ostudy = optuna.load_study(study_name="search", storage=f"sqlite:///{root}/optuna.db")
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "COMPLETE"]
    for t, row in zip(ostudy.trials, out["trials"]):
        res = json.loads((Path(row["workdir"]) / "results.json").read_text())
        assert t.value == res["eval"]["mse"]  # told the final eval metric
        assert row["name"].startswith(f"t{t.number:03d},")
        cfg = json.loads((Path(row["workdir"]) / "config.json").read_text())
        assert cfg["optim"]["lr"] == t.params["optim.lr"]
        assert cfg["model"]["hidden"] == t.params["model.hidden"]
    # More trials on the same storage: the two done ones stay, one more is asked.
    study3 = study_from_dict(_search(n_trials=3, pruner="none"), name="search")
    again = run_sweep(study3, root, workers=2, log=lambda s: None)
    assert again["counts"] == {"done": 3}
    assert [r["ran"] for r in again["trials"]] == [False, False, True]
    rep = report(study3, root, plots=False)
    assert "Best trials by eval.mse" in rep["markdown"]
    assert "Parameter importance (PED-ANOVA" in rep["markdown"]
    assert rep["rows"] and sum(r["done"] for r in rep["rows"]) == 3


def test_the_pruner_never_stops_a_trial_at_its_last_step(tmp_path):
    """A stop at the last eval saves no compute and lands while the trainer writes its
    results (experiments/lr_search.py lost a finished trial so, return code -15): the
    monitor reports that step and lets the trial finish. Earlier steps prune as before."""
    optuna = pytest.importorskip("optuna", reason=REASON.format("optuna", "optuna"))
    from rnnjax.sweeps.search import OptunaPruning

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url)
    stops = {}
    for step in (100, 600):  # train.steps is 600
        wd = tmp_path / f"wd{step}"
        wd.mkdir()
        (wd / "config.json").write_text(json.dumps({"train": {"steps": 600}}))
        (wd / "metrics.jsonl").write_text(
            json.dumps({"step": step, "split": "eval", "mse": 0.5}) + "\n")
        trial = study.ask()
        monitor = OptunaPruning(url, "s", trial._trial_id, str(wd / "metrics.jsonl"), "eval",
                                "mse", {"pruner": "threshold", "pruner_kwargs": {"upper": 0.0}})
        stops[step] = monitor.should_stop()
        assert study._storage.get_trial(trial._trial_id).intermediate_values == {step: 0.5}
    assert stops == {100: True, 600: False}


def test_a_trial_that_finished_before_its_prune_landed_counts_as_done(tmp_path):
    """The pruner may judge a trial's last eval while its trainer is writing its results;
    the SIGTERM then kills a finished run (seen in experiments/lr_search.py: return code
    -15, results.json done). Such a trial is done and told COMPLETE with its metric, not
    PRUNED; one stopped before its results is pruned."""
    optuna = pytest.importorskip("optuna", reason=REASON.format("optuna", "optuna"))
    from rnnjax.sweeps.executors import Outcome
    from rnnjax.sweeps.report import report
    from rnnjax.sweeps.runner import _Book, _finish
    from rnnjax.sweeps.search import OptunaSource
    from rnnjax.train.workdir import Workdir

    desc = _search(n_trials=2, pruner="threshold", pruner_kwargs={"upper": 0.0})
    study = study_from_dict(desc, name="late")
    root = tmp_path / "root"
    root.mkdir()
    src = OptunaSource(study, root, python=sys.executable, timeout=None, workers=2,
                       log=lambda s: None)
    finished, stopped = src.take(2)
    Workdir(finished.trials[0].workdir).write_results(step=40, best_step=40,
                                                      eval_metrics={"mse": 0.125})
    Workdir(stopped.trials[0].workdir).create()
    book = _Book(study, root, [u.trials[0] for u in (finished, stopped)], kind="optuna")
    stop = Outcome(-15, pruned=True)
    statuses = [_finish(book, u.trials[0], stop, 1.0, ["rnnjax"], tmp_path / "err.log")
                for u in (finished, stopped)]
    assert statuses == ["done", "pruned"]
    for u, status in zip((finished, stopped), statuses):
        src.done(u, stop, [status])
    book.flush()
    ostudy = optuna.load_study(study_name="late", storage=f"sqlite:///{root}/optuna.db")
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "PRUNED"]
    assert ostudy.trials[0].value == 0.125
    assert src.known_statuses() == {stopped.trials[0].name: "pruned"}
    rows = report(study, root, plots=False)["rows"]  # one per trial, in the trials' order
    assert [r["done"] for r in rows] == [1, 0]
    assert rows[0]["metrics"]["eval.mse"]["mean"] == 0.125


@pytest.mark.subprocess
def test_optuna_prunes_a_trial_from_its_logged_eval_metric(tmp_path):
    optuna = pytest.importorskip("optuna", reason=REASON.format("optuna", "optuna"))
    # ThresholdPruner(upper=0): any eval MSE prunes at the first report, deterministically.
    desc = _search(n_trials=1, pruner="threshold", pruner_kwargs={"upper": 0.0})
    desc["fixed"].update({"train.steps": 3000, "train.eval_every": 2,
                          "train.checkpoint_every": 1000})
    root = tmp_path / "root"
    study = study_from_dict(desc, name="prune")
    out = run_sweep(study, root, log=lambda s: None, timeout=300)
    assert out["counts"] == {"pruned": 1}
    (row,) = out["trials"]
    assert row["returncode"] == 143  # SIGTERM: the trainer saved and exited
    ostudy = optuna.load_study(study_name="prune", storage=f"sqlite:///{root}/optuna.db")
    (t,) = ostudy.trials
    assert t.state.name == "PRUNED" and 2 in t.intermediate_values
    wd = Path(row["workdir"])
    assert trial_status(wd) == "started" and not (wd / "failed.json").exists()
    assert (wd / "checkpoints").is_dir()  # saved on SIGTERM: it could be resumed
    # A re-run leaves a pruned trial alone.
    again = run_sweep(study, root, log=lambda s: None)
    assert again["counts"] == {"pruned": 1} and again["trials"][0]["ran"] is False
