"""Multi-process training (jax.distributed) on one machine: 2 CPU processes == 1 process.

Two ``rnnjax train`` processes on localhost, each with one CPU device, feed their halves
of every global batch; one process with the same global batch is the reference. Their
losses must agree within 1e-5 for 20 steps (the only difference is the order of the
cross-device gradient sum), and killing both mid-run and re-running resumes to the same
numbers as an uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import numpy as np
import pytest
from _helpers import ROOT, checkpoint_steps, env, rnnjax_cmd, rows, wait_for

pytestmark = pytest.mark.subprocess

COMMON = ["--config", "configs/adding.py:smoke,T=12", "--config.train.steps=20",
          "--config.train.log_every=1", "--config.train.eval_every=10",
          "--config.train.checkpoint_every=5", "--config.train.batch_size=8",
          "--config.train.eval_batch_size=8", "--no-progress"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(workdir, log_prefix, extra=()):
    port = _port()
    procs = []
    for pid in range(2):
        out = open(f"{log_prefix}.{pid}.log", "w")  # noqa: SIM115 (closed by the OS at exit)
        procs.append(subprocess.Popen(
            rnnjax_cmd("train", *COMMON, *extra, "--workdir", str(workdir),
                       "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                       "--process-id", str(pid)),
            cwd=ROOT, env=env(XLA_FLAGS="--xla_force_host_platform_device_count=1"),
            stdout=out, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, timeout=600):
    for p in procs:
        p.wait(timeout=timeout)
    return [p.returncode for p in procs]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in rows(workdir, "train")}


def test_two_processes_match_one_and_resume_after_both_are_killed(tmp_path):
    one = tmp_path / "one"
    ref = subprocess.run(rnnjax_cmd("train", *COMMON, "--workdir", str(one)), cwd=ROOT,
                         env=env(XLA_FLAGS="--xla_force_host_platform_device_count=1"),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    two = tmp_path / "two"
    codes = _wait(_start_pair(two, tmp_path / "two"))
    logs = "".join((tmp_path / f"two.{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs[-3000:]
    a, b = _losses(one), _losses(two)
    assert sorted(b) == list(range(1, 21))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                               rtol=1e-5, atol=1e-6)
    # Only process 0 wrote the run directory's files: each step logged once.
    assert [r["step"] for r in rows(two, "train")] == list(range(1, 21))
    res = json.loads((two / "results.json").read_text())
    assert res["step"] == 20

    # Kill both after a checkpoint, re-run: the same numbers as the uninterrupted pair.
    killed = tmp_path / "killed"
    procs = _start_pair(killed, tmp_path / "killed")
    try:
        wait_for(lambda: any(s >= 10 for s in checkpoint_steps(killed)), procs[0], timeout=600)
        for p in procs:
            p.send_signal(signal.SIGKILL)
        _wait(procs, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = _wait(_start_pair(killed, tmp_path / "again"))
    logs = "".join((tmp_path / f"again.{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs[-3000:]
    assert "resumed from step" in logs
    c = _losses(killed)
    assert sorted(c) == list(range(1, 21))
    assert [c[s] for s in sorted(c)] == [b[s] for s in sorted(b)]
