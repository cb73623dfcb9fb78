"""Gradient flow through time, gate saturation and spectral radii against numpy float64."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.cli import main
from rnnjax.diagnostics import (
    diagnose,
    grad_norms_over_time,
    hidden_grads,
    recurrent_cells,
    spectral_radii,
    task_loss_fn,
    training_diagnostics,
)
from rnnjax.nn import CELLS, ElmanCell, make_rnn


class LinearElmanCell(ElmanCell):
    """An Elman cell with the identity activation: ``∂h_t/∂h_{t-1} = W_hh^T`` exactly."""

    activations = {**ElmanCell.activations, "identity": lambda a: a}


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def _rnn(cell, E, H, rng, radius, **kw):
    model = make_rnn(cell, E, H, rngs=nnx.Rngs(0), **kw)
    layer = model.layers[0]
    layer.cell.w_hh[...] = jnp.asarray(radius * _orthogonal(rng, H), jnp.float32)
    return model


def _numpy_elman_grads(cell, x, lengths, v, act, dact):
    """float64 forward and backward through time; returns ‖∂L/∂h_t‖ (T, B), L = Σ v·h_last."""
    w_ih = np.asarray(cell.w_ih[...], np.float64)
    w_hh = np.asarray(cell.w_hh[...], np.float64)
    b = np.asarray(cell.b_ih[...], np.float64) + np.asarray(cell.b_hh[...], np.float64)
    B, T, _ = x.shape
    norms = np.zeros((T, B))
    for r in range(B):
        hs, h = [], np.zeros(w_hh.shape[0])
        for t in range(lengths[r]):
            h = act(x[r, t] @ w_ih + b + h @ w_hh)
            hs.append(h)
        g = v[r].astype(np.float64)  # ∂L/∂h at the row's last valid step
        for t in range(lengths[r] - 1, -1, -1):
            norms[t, r] = np.linalg.norm(g)
            g = (g * dact(hs[t])) @ w_hh.T
    return norms


def test_tanh_elman_with_radius_below_one_vanishes_geometrically():
    rng = np.random.default_rng(0)
    B, T, E, H, radius = 4, 20, 3, 6, 0.5
    model = _rnn("rnn_tanh", E, H, rng, radius)
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    lengths = np.array([20, 15, 20, 9])
    v = rng.normal(size=(B, H)).astype(np.float32)

    def loss_fn(m):
        carries, _ = m(jnp.asarray(x), seq_lengths=jnp.asarray(lengths), return_carry=True)
        return jnp.sum(carries[0] * v)

    loss, grads, record = hidden_grads(model, loss_fn)
    g = np.asarray(grads["0"])  # (T, B, H)
    ref = _numpy_elman_grads(model.layers[0].cell, x, lengths, v, np.tanh,
                             lambda h: 1.0 - h**2)
    np.testing.assert_allclose(np.linalg.norm(g, axis=-1), ref, rtol=1e-4, atol=1e-9)
    # Padded steps get no gradient and are left out of the batch mean.
    assert np.all(g[15:, 1] == 0) and np.all(g[9:, 3] == 0)
    norms = grad_norms_over_time(grads, record)["0"]
    valid = np.arange(T)[:, None] < lengths[None, :]
    np.testing.assert_allclose(norms, (ref * valid).sum(1) / valid.sum(1), rtol=1e-4)
    # ‖∂h_t/∂h_{t-1}‖ <= |tanh'| ‖W‖ <= 0.5: each step back at most halves the gradient.
    full = np.linalg.norm(g[:, [0, 2]], axis=-1)  # rows with the full length
    ratios = full[:-1] / full[1:]
    assert np.all(ratios <= radius + 1e-5)
    assert np.all(full[0] <= radius ** (T - 1) * full[-1] * (1 + 1e-4))


def test_linear_elman_with_radius_above_one_explodes(monkeypatch):
    monkeypatch.setitem(CELLS, "rnn_linear", (LinearElmanCell, {"activation": "identity"}))
    rng = np.random.default_rng(1)
    B, T, E, H, radius = 3, 12, 2, 5, 1.5
    model = _rnn("rnn_linear", E, H, rng, radius)
    x = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    v = rng.normal(size=(B, H)).astype(np.float32)

    def loss_fn(m):
        return jnp.sum(m(x)[:, -1] * v)

    d = diagnose(model, loss_fn)
    norms = np.asarray(d["grad_norms"]["0"])
    # ∂L/∂h_t = v (W^T)^(T-1-t) and W = 1.5 Q: the norm is 1.5^(T-1-t) ‖v‖ exactly.
    want = radius ** np.arange(T - 1, -1, -1) * np.linalg.norm(v, axis=1).mean()
    np.testing.assert_allclose(norms, want, rtol=1e-4)
    assert d["grad_summary"]["0"]["per_step_factor"] == pytest.approx(radius, rel=1e-4)
    assert d["spectral_radius"]["0"]["h"] == pytest.approx(radius, rel=1e-5)
    # The hook is gone afterwards: the cell's own scan is back.
    cell = model.layers[0].cell
    assert "scan_projected" not in vars(cell)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _frac(a, lo, hi):
    return {"below": float(np.mean(a < lo)), "above": float(np.mean(a > hi))}


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_gate_saturation_matches_numpy(cell_name):
    rng = np.random.default_rng(2)
    B, T, E, H = 4, 10, 3, 5
    model = make_rnn(cell_name, E, H, rngs=nnx.Rngs(3))
    cell = model.layers[0].cell
    cell.w_ih[...] = cell.w_ih[...] * 4.0  # push some gates into saturation
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    d = diagnose(model, lambda m: jnp.sum(m(jnp.asarray(x)) ** 2))
    sat = d["gate_saturation"]["0"]

    w_ih, w_hh = np.asarray(cell.w_ih[...], np.float64), np.asarray(cell.w_hh[...], np.float64)
    b_ih, b_hh = np.asarray(cell.b_ih[...], np.float64), np.asarray(cell.b_hh[...], np.float64)
    acts: dict[str, list] = {}
    h = np.zeros((B, H))
    c = np.zeros((B, H))
    for t in range(T):
        xt = x[:, t].astype(np.float64)
        if cell_name == "lstm":
            a = xt @ w_ih + b_ih + h @ w_hh + b_hh
            i, f, gg, o = (_sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                           _sigmoid(a[:, 3 * H:]))
            c = f * c + i * gg
            h = o * np.tanh(c)
            step = {"i": i, "f": f, "g": gg, "o": o}
        else:  # PyTorch GRU
            gi, gh = xt @ w_ih + b_ih, h @ w_hh + b_hh
            r = _sigmoid(gi[:, :H] + gh[:, :H])
            z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            step = {"r": r, "z": z, "n": n}
        for k, v in step.items():
            acts.setdefault(k, []).append(v)
    assert set(sat) == set(acts)
    tol = 1.5 / (B * T * H)  # one activation on the threshold may round either way
    for k, v in acts.items():
        a = np.stack(v)
        lo, hi = (-0.95, 0.95) if k in ("g", "n") else (0.05, 0.95)
        want = _frac(a, lo, hi)
        assert sat[k]["below"] == pytest.approx(want["below"], abs=tol), k
        assert sat[k]["above"] == pytest.approx(want["above"], abs=tol), k
        assert sat[k]["saturated"] == pytest.approx(want["below"] + want["above"], abs=2 * tol)
    assert sum(s["saturated"] for s in sat.values()) > 0  # the test exercises saturation


def test_spectral_radius_per_gate_block_uses_eigenvalues():
    H = 4
    model = make_rnn("lstm", 2, H, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    q = _orthogonal(rng, H)
    blocks = [0.3 * q,  # i: scaled orthogonal, radius 0.3
              np.triu(rng.normal(size=(H, H)), 1) * 5 + np.diag([0.1, -1.7, 0.5, 0.2]),  # f
              q @ np.diag([0.9, -0.2, 0.4, 0.1]) @ q.T,  # g: symmetric, radius 0.9
              np.zeros((H, H))]  # o
    model.layers[0].cell.w_hh[...] = jnp.asarray(np.concatenate(blocks, 1), jnp.float32)
    radii = spectral_radii(model)["0"]
    # f is triangular: its eigenvalues are its diagonal, whatever its (large) norm.
    assert radii == pytest.approx({"i": 0.3, "f": 1.7, "g": 0.9, "o": 0.0}, abs=1e-5)


def test_cell_names_in_deep_bidirectional_stacks():
    model = make_rnn("gru", 3, 4, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    assert [n for n, _ in recurrent_cells(model)] == ["0.bwd", "0.fwd", "1.bwd", "1.fwd"]
    x = jnp.ones((2, 6, 3))
    d = diagnose(model, lambda m: jnp.sum(m(x)[:, 0]))  # the loss reads step 0 only
    assert set(d["grad_norms"]) == {"0.bwd", "0.fwd", "1.bwd", "1.fwd"}
    # Only the backward direction carries step-0 outputs from later steps: in the last
    # layer the forward direction has gradient at t=0 alone, the backward one everywhere.
    fwd, bwd = np.asarray(d["grad_norms"]["1.fwd"]), np.asarray(d["grad_norms"]["1.bwd"])
    assert fwd[0] > 0 and np.all(fwd[1:] == 0)
    assert np.all(bwd > 0)


def test_diagnose_cli_on_a_trained_workdir(tmp_path, capsys):
    from rnnjax.configlib import load_config
    from rnnjax.inference import load_for_inference
    from rnnjax.train.trainer import train_and_evaluate

    wd = tmp_path / "run"
    cfg = load_config("configs/adding.py:smoke,T=8,cell=lstm")
    train_and_evaluate(cfg, wd, progress=False)
    assert main(["diagnose", "--workdir", str(wd), "--batch-size", "5"]) == 0
    assert "grad_summary" in capsys.readouterr().out
    out = json.loads((wd / "diagnostics.json").read_text())
    assert out["batch_size"] == 5 and out["checkpoint_step"] == 4
    assert len(out["grad_norms"]["encoder.0"]) == 8
    assert set(out["gate_saturation"]["encoder.0"]) == {"i", "f", "g", "o"}
    assert (wd / "plots" / "grad_flow.png").read_bytes()[:4] == b"\x89PNG"
    # The same numbers in process, from the same checkpoint and batch.
    _, task, model, _ = load_for_inference(wd)
    batch = {k: np.asarray(v)[:5] for k, v in task.eval_batches(cfg.train.eval_batch_size)[0]
             .items()}
    d = diagnose(model, task_loss_fn(task, batch))
    np.testing.assert_allclose(out["grad_norms"]["encoder.0"], d["grad_norms"]["encoder.0"],
                               rtol=1e-6)
    flat = training_diagnostics(model, task, batch)
    assert flat["encoder.0/grad_last"] == pytest.approx(d["grad_summary"]["encoder.0"]["last"])
    assert flat["encoder.0/rho_f"] == pytest.approx(d["spectral_radius"]["encoder.0"]["f"])
    assert all(isinstance(v, float) for v in flat.values())


def test_model_without_recurrent_cells_is_an_error():
    lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no recurrent cell"):
        hidden_grads(lin, lambda m: jnp.sum(m(jnp.ones((1, 2)))))


def test_trainer_logs_diagnostics_every_n_steps(tmp_path):
    from rnnjax.configlib import load_config
    from rnnjax.diagnostics import training_hooks
    from rnnjax.train.metrics import read_metrics
    from rnnjax.train.trainer import train_and_evaluate

    cfg = load_config("configs/adding.py:smoke,T=6,cell=gru", ["train.diagnostics_every=2"])
    train_and_evaluate(cfg, tmp_path, progress=False, hooks=training_hooks(cfg))
    rows = [r for r in read_metrics(tmp_path) if r["split"] == "diagnostics"]
    assert [r["step"] for r in rows] == [2, 4]
    assert {"encoder.0/grad_first", "encoder.0/grad_last", "encoder.0/sat_z",
            "encoder.0/rho_n"} <= set(rows[0])
    assert all(r["encoder.0/grad_last"] > 0 for r in rows)


def test_summary_counts_underflowed_steps_and_measures_decay_after_them():
    from rnnjax.diagnostics import _grad_summary

    norms = np.array([0.0, 0.0, 1e-6, 1e-4, 1e-2, 1.0])  # factor 100 per step from t=2
    s = _grad_summary(norms)
    assert s["zero_steps"] == 2
    assert s["per_step_factor"] == pytest.approx(0.01)
    assert s["first"] == 0.0 and s["first_over_last"] == 0.0


def test_lru_state_gradient_has_the_closed_form_and_radius_is_max_abs_lambda():
    """A linear LRU (activation 'none') with L = Σ_t r_t · y_t: s_k = λ^(k-t) s_t + ..., so
    ∂L/∂Re s_t = Σ_{k>=t} Re(u_k λ^(k-t)) and ∂L/∂Im s_t = -Σ_{k>=t} Im(u_k λ^(k-t)) with
    u_k = r_k C (per state component), over each row's valid steps."""
    rng = np.random.default_rng(4)
    B, T, E, H = 3, 9, 2, 4
    model = make_rnn("lru", E, H, rngs=nnx.Rngs(1), activation="none", r_min=0.5, r_max=0.95)
    cell = model.layers[0].cell
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    r = rng.normal(size=(B, T, H)).astype(np.float32)
    lengths = np.array([9, 5, 1])

    def loss_fn(m):
        return jnp.sum(m(jnp.asarray(x), seq_lengths=jnp.asarray(lengths)) * r)

    _, grads, record = hidden_grads(model, loss_fn)
    g = np.asarray(grads["0"], np.float64)  # (T, B, 2H)
    assert record["0"]["shape"] == (T, B, 2 * H) and record["0"]["cell"] == "LRUCell"
    lam = np.asarray(cell.eigenvalues(), np.complex128)
    w_out = np.asarray(cell.w_out[...], np.float64)
    C = w_out[:H].T - 1j * w_out[H:].T  # (H_out, N)
    want = np.zeros_like(g)
    for b in range(B):
        for t in range(lengths[b]):
            acc = sum((r[b, k].astype(np.float64) @ C) * lam ** (k - t)
                      for k in range(t, lengths[b]))
            want[t, b] = np.concatenate([acc.real, -acc.imag])
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
    assert spectral_radii(model)["0"] == pytest.approx({"lambda": float(np.abs(lam).max())})
