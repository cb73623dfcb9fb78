"""sLSTM (rnnjax.nn.slstm) against ``xlstm``'s ``sLSTMLayer`` (vanilla backend, CPU), and
against float64 finite differences.

``slstm_from_torch`` maps the layer's weights onto rnnjax's layout: a dense input
projection ``w`` ``(E, 4H)`` (the layer's head-wise block-diagonal projections, with zeros
off the blocks), bias ``b`` ``(4H)``, recurrent ``r`` ``(N, DH, 4, DH)`` and the per-head
norm's weight ``(H,)``. Shapes are tiny: the CPU is shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnjax.nn.slstm import (
    SLSTMCell,
    SLSTMState,
    _preactivations,
    multihead_layer_norm,
    slstm_sequence,
    slstm_step,
)

E, NH = 16, 4  # the constructor REFERENCES.md records as running on CPU


def _xlstm_layer(torch, seed=0):
    pytest.importorskip("xlstm", reason="pip install xlstm==2.0.6")
    from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

    torch.manual_seed(seed)
    layer = sLSTMLayer(sLSTMLayerConfig(embedding_dim=E, num_heads=NH, conv1d_kernel_size=0,
                                        backend="vanilla"))
    # The package initialises R to zeros and most biases to zeros: randomise every weight
    # so that each one is exercised (the recurrent path above all).
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    return layer.eval()


def slstm_from_torch(layer) -> dict[str, np.ndarray]:
    """rnnjax's sLSTM parameters from an ``xlstm`` ``sLSTMLayer`` (vanilla backend, no conv).

    Layout facts, read from ``xlstm/blocks/slstm``:

    * the layer concatenates ``[fgate(x), igate(x), zgate(x), ogate(x)]`` as the cell's
      ``[i, f, z, o]``: the module named ``fgate`` feeds the input gate and ``igate`` the
      forget gate (names swapped in ``layer.py``; the maths is what counts);
    * a ``LinearHeadwiseExpand`` weight is ``(N, out/N, in/N)``:
      ``y[n, o] = sum_d x[n, d] w[n, o, d]``;
    * the vanilla cell stores ``_recurrent_kernel_`` ``(N, 4*DH, DH)`` as ``[n, g*DH + e, a]``
      (unit ``a`` of ``h`` to unit ``e`` of gate ``g``) and ``_bias_`` gate-major ``(4*N*DH,)``.
    """
    cell = layer.slstm_cell
    H = cell.config.hidden_size
    N = cell.config.num_heads
    DH = H // N
    modules = [layer.fgate, layer.igate, layer.zgate, layer.ogate]  # -> i, f, z, o
    E_in = modules[0].config.in_features
    DI = E_in // N
    w = np.zeros((E_in, 4 * H), np.float32)
    for g, mod in enumerate(modules):
        wg = mod.weight.detach().numpy()  # (N, DH, DI)
        for n in range(N):
            w[n * DI:(n + 1) * DI, g * H + n * DH:g * H + (n + 1) * DH] = wg[n].T
    r_int = cell._recurrent_kernel_.detach().numpy()  # (N, 4*DH, DH) [n, g*DH+e, a]
    r = r_int.reshape(N, 4, DH, DH).transpose(0, 3, 1, 2)  # (N, a, g, e)
    return {
        "w": w,
        "b": cell._bias_.detach().numpy().copy(),
        "r": np.ascontiguousarray(r),
        "norm": layer.group_norm.weight.detach().numpy().copy(),
    }


def layer_forward(p, x):
    """The layer: ``norm(sLSTM(x w + b))``, ``x`` ``(B, T, E)`` -> ``(B, T, H)``."""
    h, _ = slstm_sequence(x @ p["w"] + p["b"], p["r"])
    return multihead_layer_norm(h, p["norm"], NH)


def test_matches_xlstm_slstm_layer_outputs_and_gradients(torch):
    layer = _xlstm_layer(torch)
    rng = np.random.default_rng(0)
    Bsz, T = 2, 10
    x = rng.standard_normal((Bsz, T, E)).astype(np.float32)
    w_out = rng.standard_normal((Bsz, T, E)).astype(np.float32)

    xt = torch.tensor(x, requires_grad=True)
    y_ref = layer(xt)
    (y_ref * torch.tensor(w_out)).sum().backward()

    p = {k: jnp.asarray(v) for k, v in slstm_from_torch(layer).items()}
    y = layer_forward(p, jnp.asarray(x))
    err = np.abs(np.asarray(y) - y_ref.detach().numpy()).max()
    assert err < 1e-5, f"max |y - y_ref| = {err}"

    gx, gp = jax.grad(lambda x_, p_: jnp.sum(layer_forward(p_, x_) * w_out), argnums=(0, 1))(
        jnp.asarray(x), p)
    # Map the torch gradients through the same layout function as the weights.
    with torch.no_grad():
        grads = {name: prm.grad.clone() for name, prm in layer.named_parameters()}
        for name, prm in layer.named_parameters():
            prm.copy_(grads[name])
    g_ref = slstm_from_torch(layer)
    errs = {"x": np.abs(np.asarray(gx) - xt.grad.numpy()).max()}
    for k in ("b", "r", "norm"):
        errs[k] = np.abs(np.asarray(gp[k]) - g_ref[k]).max()
    # Only the head-wise blocks of w exist in the layer: compare there.
    blocks = g_ref["w"] != 0
    errs["w"] = np.abs(np.asarray(gp["w"])[blocks] - g_ref["w"][blocks]).max()
    assert all(e < 1e-4 for e in errs.values()), errs


def test_step_by_step_equals_sequence():
    rng = np.random.default_rng(1)
    Bsz, T, H, N = 2, 6, 8, 2
    wx = jnp.asarray(rng.standard_normal((Bsz, T, 4 * H)), jnp.float32)
    r = jnp.asarray(0.5 * rng.standard_normal((N, H // N, 4, H // N)), jnp.float32)
    h_seq, s_seq = slstm_sequence(wx, r)
    s = SLSTMState(*(jnp.zeros((Bsz, H)),) * 4)
    for t in range(T):
        s, h_t = slstm_step(s, wx[:, t], r)
        np.testing.assert_allclose(h_t, h_seq[:, t], atol=1e-6)
    for a, b in zip(s, s_seq):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_heads_are_independent():
    """The recurrent matrix is block-diagonal: perturbing head 0's inputs leaves the other
    heads' outputs unchanged (the input projection here is the identity per gate)."""
    rng = np.random.default_rng(2)
    Bsz, T, H, N = 1, 5, 8, 2
    wx = rng.standard_normal((Bsz, T, 4 * H)).astype(np.float32)
    r = jnp.asarray(rng.standard_normal((N, H // N, 4, H // N)), jnp.float32)
    wx2 = wx.copy()
    # Head 0's cell-input pre-activations. (Not the input gate's: a constant shift of ĩ at
    # every step scales c and n alike and leaves h unchanged, which the stabiliser keeps exact.)
    wx2[..., 2 * H: 2 * H + H // N] += 1.0
    h1, _ = slstm_sequence(jnp.asarray(wx), r)
    h2, _ = slstm_sequence(jnp.asarray(wx2), r)
    np.testing.assert_array_equal(h1[..., H // N:], h2[..., H // N:])
    assert np.abs(np.asarray(h1[..., : H // N] - h2[..., : H // N])).max() > 1e-3


# The torch fixture only pins threads and the seed; sharing it across examples is fine.
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 12))
def test_matches_xlstm_over_lengths(torch, T):
    layer = _xlstm_layer(torch, seed=T)
    x = np.random.default_rng(T).standard_normal((1, T, E)).astype(np.float32)
    with torch.no_grad():
        y_ref = layer(torch.tensor(x)).numpy()
    p = {k: jnp.asarray(v) for k, v in slstm_from_torch(layer).items()}
    np.testing.assert_allclose(layer_forward(p, jnp.asarray(x)), y_ref, atol=1e-5, rtol=0)


def test_gradients_match_float64_finite_differences(x64):
    from jax.test_util import check_grads

    rng = np.random.default_rng(3)
    Bsz, T, H, N = 1, 4, 4, 2
    wx = jnp.asarray(rng.standard_normal((Bsz, T, 4 * H)))
    r = jnp.asarray(0.5 * rng.standard_normal((N, H // N, 4, H // N)))
    s0 = SLSTMState(*(jnp.asarray(rng.standard_normal((Bsz, H))) for _ in range(2)),
                    jnp.asarray(rng.uniform(1.0, 2.0, (Bsz, H))),  # n >= 1, as after a step
                    jnp.asarray(rng.standard_normal((Bsz, H))))
    w = jnp.asarray(rng.standard_normal((Bsz, T, H)))

    def loss(wx_, r_, h, c, n, m):
        hs, s = slstm_sequence(wx_, r_, SLSTMState(h, c, n, m))
        return jnp.sum(hs * w) + jnp.sum(s.c / s.n)

    check_grads(loss, (wx, r) + tuple(s0), order=1, modes=["rev"], eps=1e-6,
                atol=1e-6, rtol=1e-6)
    # And from the zero state, through the first-step branch.
    check_grads(lambda wx_, r_: jnp.sum(slstm_sequence(wx_, r_)[0] * w), (wx, r), order=1,
                modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# The cell (rnnjax.nn.slstm.SLSTMCell): its xlstm layout and its recurrent_matrices hook.
# The protocol checks every family shares: tests/test_cell_contract.py.
# ---------------------------------------------------------------------------
def test_cell_with_xlstm_weights_matches_the_layer(torch):
    """The cell's own parameter layout, loaded through slstm_from_torch, runs the layer."""
    layer = _xlstm_layer(torch, seed=3)
    x = np.random.default_rng(8).standard_normal((2, 6, E)).astype(np.float32)
    with torch.no_grad():
        y_ref = layer(torch.tensor(x)).numpy()
    p = slstm_from_torch(layer)
    cell = SLSTMCell(E, E, num_heads=NH, rngs=nnx.Rngs(0))
    for k in ("w", "b", "r"):
        getattr(cell, {"w": "w_ih", "b": "b_ih", "r": "r"}[k])[...] = jnp.asarray(p[k])
    x_tm = jnp.moveaxis(jnp.asarray(x), 1, 0)
    _, ys = cell.scan_projected(cell.initialize_carry((2,)), cell.project_inputs(x_tm))
    y = multihead_layer_norm(jnp.moveaxis(ys, 0, 1), jnp.asarray(p["norm"]), NH)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)


def test_cell_recurrent_matrices_reproduce_the_recurrent_term():
    rng = np.random.default_rng(10)
    cell = SLSTMCell(3, 8, num_heads=2, rngs=nnx.Rngs(0))
    carry = SLSTMState(*(jnp.asarray(rng.standard_normal((2, 8)), jnp.float32) for _ in range(2)),
                       jnp.ones((2, 8)), jnp.zeros((2, 8)))
    xp = cell.project_inputs(jnp.asarray(rng.standard_normal((2, 3)), jnp.float32))
    mats = cell.recurrent_matrices()
    # h @ R_g reproduces the einsum's recurrent term gate by gate.
    got = jnp.concatenate([xp[:, k * 8:(k + 1) * 8] + carry.h @ mats[f"r_{g}"]
                           for k, g in enumerate("ifzo")], axis=-1)
    want = jnp.concatenate(_preactivations(carry.h, xp, cell.r[...]), axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-6)
