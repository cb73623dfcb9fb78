"""Small helpers shared by the experiment-system tests (configs, trainer, tasks, CLI).

They run training in-process or as a ``python -m rnnjax`` subprocess, read a
workdir back (metrics rows, results, restored parameters) and compare pytrees
bitwise. They hold no test logic and no reference implementations, and must
never change global state (JAX flags, signal handlers, the working directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# XLA flags that make the tests' many small programs compile faster (docs/performance.md
# §15): LLVM at optimisation level 0, and XLA:CPU's older loop emitters for fusions instead
# of the MLIR fusion emitters (backend compile of test_nn_cells.py and the block step-form
# tests, one core: 114 s -> 67 s of CPU). Both make the compiled code slower to run (the
# fusion emitters' 0.76x -> 0.59x of torch on the M-shape LSTM step), which tiny test
# programs never notice; users' runs keep XLA's defaults.
TEST_XLA_FLAGS = {"xla_backend_optimization_level": "--xla_backend_optimization_level=0",
                  "xla_cpu_use_fusion_emitters": "--xla_cpu_use_fusion_emitters=false"}


def config(spec: str, *overrides: str, **fields):
    """``load_config("configs/<spec>", overrides)``, then sets ``fields`` (``"optim.clip"="none"``).

    ``fields`` are set on the locked config directly, bypassing the command-line
    literal parser (so a string field can hold ``"none"``); dotted names use ``__``.
    """
    from rnnjax.configlib import load_config

    cfg = load_config(str(CONFIGS / spec), list(overrides))
    for key, value in fields.items():
        *parents, leaf = key.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def train(cfg, workdir) -> dict:
    from rnnjax.train.trainer import train_and_evaluate

    return train_and_evaluate(cfg, workdir, progress=False)


def rows(workdir, split: str | None = None) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines if line.strip()]
    return [r for r in out if split is None or r["split"] == split]


def last_rows_by_step(workdir, split: str) -> dict[int, dict]:
    """The last row per step (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r for r in rows(workdir, split)}


def results(workdir) -> dict:
    return json.loads((Path(workdir) / "results.json").read_text())


def checkpoint_steps(workdir) -> list[int]:
    """Committed checkpoint steps: Orbax renames a step's temp folder to ``<step>`` on commit."""
    d = Path(workdir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def restored_params(workdir, which: str = "latest") -> tuple[dict[str, np.ndarray], int]:
    """``{path: array}`` of the params restored by ``load_for_inference`` and its step."""
    from rnnjax.inference import load_for_inference

    _, _, model, step = load_for_inference(workdir, which)
    return flat(nnx.state(model, nnx.Param)), step


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if not np.array_equal(a[k], b[k]):
            diff = np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))
            raise AssertionError(f"{k} differs (max abs diff {diff:.3g})")


class Killed(BaseException):
    """Stands for SIGKILL in-process: a BaseException, so no ``except Exception`` catches it."""


def crash_at_step(monkeypatch, task_cls, step):
    """Makes the train iterator die when step ``step`` asks for its batch (not at a save)."""
    original = task_cls.train_iterator

    class Dying:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __iter__(self):
            return self

        def __next__(self):
            self.calls += 1
            if self.calls == step:
                raise Killed(step)
            return next(self.inner)

        def state_dict(self):
            return self.inner.state_dict()

        def load_state_dict(self, state):
            self.inner.load_state_dict(state)

    monkeypatch.setattr(task_cls, "train_iterator",
                        lambda self, *a, **k: Dying(original(self, *a, **k)))


def env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: CPU, unbuffered, no inherited XLA flags but the
    test run's compile-speed flags (``TEST_XLA_FLAGS``, set by tests/conftest.py), plus
    ``extra``."""
    e = dict(os.environ)
    e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    keep = [f for f in e.pop("XLA_FLAGS", "").split()
            if any(f.startswith(f"--{name}=") for name in TEST_XLA_FLAGS)]
    e.update(extra)
    flags = " ".join([*e.get("XLA_FLAGS", "").split(), *keep])
    if flags:
        e["XLA_FLAGS"] = flags
    return e


def rnnjax_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rnnjax", *args]


def run_rnnjax(*args: str, timeout: float = 120, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(rnnjax_cmd(*args), cwd=ROOT, env=env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def start_rnnjax(*args: str, log: Path, **extra_env) -> subprocess.Popen:
    """Starts ``python -m rnnjax ARGS`` with stdout/stderr in ``log.out``/``log.err`` files.

    Files rather than pipes: a pipe nobody reads while we poll could fill and block the run.
    """
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(rnnjax_cmd(*args), cwd=ROOT, env=env(**extra_env), stdout=out,
                                stderr=err)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    return Path(f"{proc.log}.out").read_text(), Path(f"{proc.log}.err").read_text()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.01):
    """Polls ``predicate()`` until true; fails with the process output if it exits or times out."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            out, err = output(proc)
            raise AssertionError(f"process exited ({proc.returncode}) before the condition held:"
                                 f"\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(poll)
    proc.kill()
    proc.wait()
    raise AssertionError("timed out waiting for the training subprocess")
