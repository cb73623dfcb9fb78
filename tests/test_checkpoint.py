"""The Orbax checkpoint factory: which steps are kept, exact round trips, clear errors.

Kept steps are checked against the rule written in ``Checkpointer``'s docstring
(the last ``keep`` plus the best by the metric), computed here by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.train.checkpoint import Checkpointer, CheckpointError


def _tree(v: float):
    return {"params": {"w": jnp.full((3, 4), v, jnp.float32), "b": jnp.arange(4.0) + v},
            "step": jnp.asarray(int(v), jnp.int32),
            "carry": (jnp.zeros((2, 3)) + v, jnp.ones((2, 3), jnp.bfloat16) * v)}


def _expected_kept(metrics: dict[int, float | None], keep: int, mode: str) -> list[int]:
    steps = sorted(metrics)
    scored = {s: m for s, m in metrics.items() if m is not None}
    best = (min if mode == "min" else max)(scored, key=lambda s: scored[s])
    return sorted(set(steps[-keep:]) | {best})


METRICS = {1: 0.5, 2: None, 3: 0.9, 4: None, 5: 0.6, 6: 0.7, 7: 0.1, 8: 0.4, 9: None}
BEST = {"min": 7, "max": 3}  # by METRICS; steps 2, 4 and 9 have no metric


def _save_all(directory, mode):
    ckpt = Checkpointer(directory, keep=2, best_metric="eval/acc", best_mode=mode)
    for step, m in METRICS.items():
        ckpt.save(step, _tree(step), {"step": step},
                  None if m is None else {"eval/acc": m, "eval/other": 1.0})
    return ckpt


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keeps_last_n_plus_best(tmp_path, mode):
    ckpt = _save_all(tmp_path, mode)
    want = _expected_kept(METRICS, keep=2, mode=mode)
    assert want == sorted({8, 9, BEST[mode]})
    assert ckpt.all_steps() == want
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == want
    assert ckpt.latest_step() == 9
    ckpt.close()




@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_step_is_the_best_by_metric(tmp_path, mode):
    ckpt = _save_all(tmp_path, mode)
    assert ckpt.best_step() == BEST[mode]
    ckpt.close()
    # A fresh manager on the same folder (a resumed run) sees the same best.
    again = Checkpointer(tmp_path, keep=2, best_metric="eval/acc", best_mode=mode)
    assert again.best_step() == BEST[mode] and again.latest_step() == 9
    again.close()


def test_metrics_without_the_best_key_are_not_kept_as_best(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=1, best_metric="eval/acc", best_mode="max")
    ckpt.save(1, _tree(1), {}, {"eval/acc": 0.3})
    ckpt.save(2, _tree(2), {}, {"eval/loss": 9.0})  # no eval/acc: not a best candidate
    ckpt.save(3, _tree(3), {}, None)
    assert ckpt.all_steps() == [1, 3]
    ckpt.close()


def test_without_best_metric_keeps_only_last_n(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for s in range(1, 6):
        ckpt.save(s, _tree(s), {"step": s}, {"eval/acc": float(s)})
    assert ckpt.all_steps() == [4, 5] and ckpt.best_step() is None
    ckpt.close()


def test_round_trip_is_exact_and_restores_meta(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3)
    saved = _tree(2.5)
    meta = {"step": 2, "data_state": {"epoch": 1, "index": 7, "seed": 0}, "seed": 0}
    ckpt.save(1, _tree(1.0), {"step": 1})
    ckpt.save(2, saved, meta)
    target = _tree(0.0)
    state, got_meta = ckpt.restore(target)  # latest
    assert got_meta == meta
    assert jax.tree.structure(state) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(saved)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state1, meta1 = ckpt.restore(target, 1)
    assert meta1 == {"step": 1} and float(state1["params"]["w"][0, 0]) == 1.0
    ckpt.close()


def test_invalid_best_mode(tmp_path):
    with pytest.raises(ValueError, match="'min' or 'max'"):
        Checkpointer(tmp_path, best_mode="best")


def test_restore_from_an_empty_directory(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    with pytest.raises(CheckpointError) as e:
        ckpt.restore(_tree(0.0))
    msg = str(e.value)
    assert str(tmp_path / "checkpoints") in msg and "rnnjax train" in msg
    ckpt.close()


def test_restore_of_a_missing_step(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(3, _tree(3), {})
    with pytest.raises(CheckpointError, match=r"step 5.*found steps \[3\]"):
        ckpt.restore(_tree(0.0), 5)
    ckpt.close()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    # every file of the step cut in half
    "truncate_all": lambda step_dir: [_truncate(p) for p in step_dir.rglob("*") if p.is_file()],
    # only the array chunks garbled, all metadata intact: must not restore silently
    "garble_arrays": lambda step_dir: [_garble(p) for p in step_dir.glob("state/**/d/*")
                                       if p.is_file()],
    # array chunks deleted
    "delete_arrays": lambda step_dir: [p.unlink() for p in step_dir.glob("state/**/d/*")
                                       if p.is_file()],
    # the meta JSON is not JSON
    "bad_meta": lambda step_dir: (step_dir / "meta" / "metadata").write_text("{not json"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_checkpoint_raises_with_advice(tmp_path, kind):
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, _tree(1.0), {"step": 1})
    ckpt.save(2, _tree(2.0), {"step": 2})
    ckpt.close()
    step_dir = tmp_path / "2"
    assert any(p.is_file() for p in step_dir.glob("state/**/d/*"))  # layout still as assumed
    CORRUPTIONS[kind](step_dir)

    ckpt = Checkpointer(tmp_path, keep=3)
    with pytest.raises(CheckpointError) as e:
        ckpt.restore(_tree(0.0), 2)  # asked for by step: an error that says what to do
    msg = str(e.value)
    assert "step 2" in msg and str(tmp_path) in msg
    assert "earlier checkpoint [1]" in msg  # what to do, and what is left
    assert "tensorstore_spec" not in msg and "\n" not in msg  # one line, no dump
    # The newest readable one (step=None, what resume asks for): the damaged step is
    # moved aside, never deleted, and the earlier checkpoint restores.
    state, meta = ckpt.restore(_tree(0.0))
    assert meta == {"step": 1} and float(state["params"]["w"][0, 0]) == 1.0
    assert not step_dir.exists()
    (aside,) = tmp_path.glob("2.unreadable-*")
    assert any(aside.rglob("*"))  # its files are all still there
    ckpt.close()


def test_restore_into_a_different_structure(tmp_path):
    """A checkpoint of another model (other shapes) is a CheckpointError, not garbage."""
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, _tree(1.0), {"step": 1})
    other = _tree(0.0)
    other["params"]["w"] = jnp.zeros((5, 4))
    with pytest.raises(CheckpointError, match="different model/config"):
        ckpt.restore(other)
    ckpt.close()
