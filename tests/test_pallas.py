"""``impl="pallas"`` (rnnjax.nn.pallas_rnn) against ``impl="scan"`` on the same weights.

The reference is the cell's plain :func:`rnnjax.nn.scan.masked_scan` of its step and
``jax.grad`` of it: a different code path (autodiff of a generic scan; no kernel, no
hand-written backward). On a machine without a GPU the kernels run in Pallas's interpret
mode, so these tests check the kernels' logic (time indexing, reverse, masks, resets,
padding of H and B, the backward formulas), not the GPU's code generation. What the GPU
lowering gets checked for here is that both kernels lower to Triton IR for CUDA
(``lowering_platforms``, no GPU needed); running that IR needs a GPU (``-m gpu``).

Interpret mode compiles slowly (~1.5 s a program), so every value/gradient check goes
through one jitted function with the mask and resets as array arguments: the ragged
cases, the hypothesis examples and the plain cases share four compiled programs per impl.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import config, results, rows, train
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.nn import Bidirectional, ElmanCell, GRUCell, LRUCell, LSTMCell, Recurrent, pallas_rnn
from rnnjax.nn.gru import gru_gates
from rnnjax.nn.lstm import lstm_gate_scale, lstm_gates

T, B, E, H = 5, 3, 2, 8
# Ragged with holes: a row with a gap, a row valid only at t=0, a row masked at t=0.
MASK = np.array([
    [1, 1, 0, 1, 1],
    [1, 0, 0, 0, 0],
    [0, 1, 1, 1, 1],
], bool).T  # (T, B)
# Restarts on valid steps, in processing order; one on a masked step (which does nothing).
RESETS = np.array([
    [0, 0, 0, 1, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 1, 0, 0],
], bool).T
CELLS = {"lstm": LSTMCell, "gru": GRUCell}
ON_GPU = jax.default_backend() == "gpu"


@pytest.fixture(autouse=True, scope="module")
def _ieee_float32_dots():
    # On a GPU, XLA's and Triton's default float32 dots are TF32, which would not agree to
    # 1e-5; both impls run IEEE float32 dots here. (No effect on CPU.)
    with jax.default_matmul_precision("highest"):
        yield


def make(kind, impl, seed=0, hidden=H, **kw):
    """A cell with non-zero biases (so GRU's b_hn placement is tested); the same weights
    for every ``impl`` at one seed."""
    cell = CELLS[kind](E, hidden, impl=impl, rngs=nnx.Rngs(seed), **kw)
    rng = np.random.default_rng(seed + 1)
    for name in ("b_ih", "b_hh"):
        p = getattr(cell, name)
        p[...] = jnp.asarray(rng.normal(scale=0.5, size=p[...].shape), p[...].dtype)
    return cell


def inputs(cell, seed=2, batch=B, steps=T):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(steps, batch, E)), jnp.float32)  # time-major
    carry = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                         cell.initialize_carry(batch))
    w_y = jnp.asarray(rng.normal(size=(steps, batch, cell.hidden_features)), jnp.float32)
    return x, carry, w_y


@partial(jax.jit, static_argnums=(0,), static_argnames=("reverse",))
def value_and_grads(graphdef, params, x, carry, mask, resets, w_y, *, reverse):
    """Outputs, final carry and the gradients of a loss that weighs every output and the
    final carry, w.r.t. the cell's parameters, the inputs and the initial carry."""

    def loss(params, x, carry):
        cell = nnx.merge(graphdef, params)
        c, ys = cell.scan_projected(carry, cell.project_inputs(x), mask, reverse=reverse,
                                    resets=resets)
        out = jnp.sum(ys * w_y) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(c))
        return out, (c, ys)

    (_, aux), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, x, carry)
    return aux, grads


def compare(kind, reverse, mask, resets, seed=0, atol=1e-5):
    """Runs both impls on the same weights and inputs and asserts they agree."""
    x, carry, w_y = inputs(make(kind, "scan", seed), seed=seed + 2)
    out = {}
    for impl in ("pallas", "scan"):
        graphdef, params = nnx.split(make(kind, impl, seed))
        out[impl] = value_and_grads(graphdef, params, x, carry, jnp.asarray(mask),
                                    jnp.asarray(resets), w_y, reverse=reverse)
    (c_k, y_k), g_k = out["pallas"]
    (c_s, y_s), g_s = out["scan"]
    np.testing.assert_allclose(np.asarray(y_k), np.asarray(y_s), atol=atol, rtol=0)
    assert np.all(np.asarray(y_k)[~np.asarray(mask)] == 0)  # masked outputs are exact zeros
    assert type(c_k) is type(c_s)  # LSTMState for the LSTM
    for a, b in zip(jax.tree.leaves(c_k), jax.tree.leaves(c_s), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)
    # params (w_ih, w_hh, b_ih, b_hh), x, carry: each leaf on its own.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_k), jax.tree.leaves(g_s),
                            strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    return g_s


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pallas_matches_scan_with_ragged_mask_and_resets(kind, reverse):
    g = compare(kind, reverse, MASK, RESETS)
    # Every gradient is really there, so agreeing is not agreeing on zeros.
    for leaf in jax.tree.leaves(g):
        assert np.max(np.abs(np.asarray(leaf))) > 1e-3


@settings(max_examples=5, deadline=None)
@given(lengths=st.lists(st.integers(0, T), min_size=B, max_size=B),
       kind=st.sampled_from(["lstm", "gru"]), reverse=st.booleans(), seed=st.integers(0, 3))
def test_pallas_matches_scan_over_lengths(lengths, kind, reverse, seed):
    # Right-padded lengths (a length 0 row keeps its carry and emits zeros), no resets.
    mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    compare(kind, reverse, mask, np.zeros((T, B), bool), seed=seed)


def test_layers_with_lengths_and_multi_head_cells():
    # Through Recurrent/Bidirectional (seq_lengths -> mask, the reverse direction), with a
    # 2-head LSTM: its block-diagonal w_hh is masked outside the kernel, which runs as is.
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, E)), jnp.float32)
    lengths = jnp.asarray([5, 1, 3])

    def layer(impl):
        return Bidirectional(Recurrent(make("lstm", impl, seed=4, num_heads=2)),
                             Recurrent(make("gru", impl, seed=5), reverse=True))

    def run(impl):  # jitted: one compile instead of many eager ones
        graphdef, state = nnx.split(layer(impl))
        return jax.jit(lambda s: nnx.merge(graphdef, s)(x, seq_lengths=lengths))(state)

    y_k, y_s = run("pallas"), run("scan")
    assert y_k.shape == (B, T, 2 * H)
    np.testing.assert_allclose(np.asarray(y_k), np.asarray(y_s), atol=1e-5, rtol=0)
    assert np.all(np.asarray(y_k)[1, 1:] == 0)


def test_rnnjax_train_with_impl_pallas_matches_impl_scan(tmp_path):
    # What `rnnjax train --config configs/adding.py:smoke,T=6
    # --config.model.cell_kwargs.impl=pallas` runs, in process: the same losses as impl=scan.
    losses = {}
    for impl in ("pallas", "scan"):
        cfg = config("adding.py:smoke,T=6", f"model.cell_kwargs.impl={impl}")
        train(cfg, tmp_path / impl)
        assert results(tmp_path / impl)["status"] == "done"
        losses[impl] = [r["loss"] for r in rows(tmp_path / impl, "train")]
    assert len(losses["pallas"]) == 4
    np.testing.assert_allclose(losses["pallas"], losses["scan"], rtol=1e-5)


def test_auto_never_picks_pallas_and_pallas_is_a_pallas_call():
    def jaxpr(impl):
        cell = make("lstm", impl)
        x, carry, _ = inputs(cell)
        return str(jax.make_jaxpr(lambda x, c: cell.scan_projected(c, cell.project_inputs(x)))(
            x, carry))

    assert "pallas_call" not in jaxpr("auto")
    assert "pallas_call" in jaxpr("pallas")


def test_off_a_gpu_the_kernel_runs_interpreted():
    # Interpreted: the kernel body becomes ordinary XLA ops; on a GPU: a Triton custom call.
    cell = make("gru", "pallas")
    x, carry, _ = inputs(cell)
    text = jax.jit(lambda x, c: cell.scan_projected(c, cell.project_inputs(x))).lower(
        x, carry).as_text()
    assert ("xla.gpu.triton" in text) is ON_GPU


@pytest.mark.parametrize("make_cell,match", [
    (lambda: ElmanCell(E, H, impl="pallas", rngs=nnx.Rngs(0)), "has no Pallas kernel"),
    (lambda: LRUCell(E, H, impl="pallas", rngs=nnx.Rngs(0)), "has no Pallas kernel"),
    (lambda: GRUCell(E, H, impl="pallas", reset_before=True, rngs=nnx.Rngs(0)),
     "reset_before=True"),
    (lambda: LSTMCell(E, H, impl="pallas", zoneout=0.1, rngs=nnx.Rngs(0)), "zoneout"),
    (lambda: LSTMCell(E, H, impl="pallas", dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), "bfloat16"),
    (lambda: LSTMCell(E, 65, impl="pallas", rngs=nnx.Rngs(0)),
     r"H=65 \(padded to 128\).*256 KiB, over the 64 KiB limit.*H <= 64 in float32"),
    (lambda: GRUCell(E, 40, impl="pallas", param_dtype=jnp.float64, rngs=nnx.Rngs(0)),
     r"H <= 32 in float64"),
], ids=["elman", "lru", "gru_reset_before", "zoneout", "bf16", "lstm_too_wide", "gru_f64"])
def test_cells_that_cannot_run_the_kernel_say_why_at_construction(make_cell, match):
    with pytest.raises(ValueError, match=r"impl='pallas' cannot apply: .*" + match):
        make_cell()


def test_the_widest_cells_that_fit_are_accepted():
    # The check the cells run at construction (building an H=64 cell compiles its init).
    assert pallas_rnn.unsupported(64, 4, jnp.float32) is None
    assert pallas_rnn.unsupported(33, 3, jnp.float32) is None  # Hp = 64
    assert pallas_rnn.unsupported(32, 4, jnp.float64) is None
    assert "H <= 64 in float32" in pallas_rnn.unsupported(65, 3, jnp.float32)


def test_kernel_entry_points_reject_bad_operands():
    w = jnp.zeros((H, 4 * H), jnp.float32)
    xp = jnp.zeros((T, B, 4 * H), jnp.float32)
    carry = (jnp.zeros((B, H), jnp.float32), jnp.zeros((B, H), jnp.float32))
    kw = {"gates": lstm_gates, "gate_scale": lstm_gate_scale}
    with pytest.raises(ValueError, match=r"need one dtype, got \['bfloat16', 'float32'\]"):
        pallas_rnn.lstm_scan(w, xp, (carry[0], carry[1].astype(jnp.bfloat16)), **kw)
    with pytest.raises(ValueError, match="runs in float32 or float64, not bfloat16"):
        pallas_rnn.lstm_scan(w.astype(jnp.bfloat16), xp.astype(jnp.bfloat16),
                             jax.tree.map(lambda a: a.astype(jnp.bfloat16), carry), **kw)
    with pytest.raises(ValueError, match="block_b must be a power of two >= 16 .*got 24"):
        pallas_rnn.lstm_scan(w, xp, carry, block_b=24, **kw)
    with pytest.raises(ValueError, match=r"carry leaves must be \(B, H\)"):
        pallas_rnn.lstm_scan(w, xp, (carry[0][:2], carry[1][:2]), **kw)
    with pytest.raises(ValueError, match=r"mask must be \(T, B\)"):
        pallas_rnn.lstm_scan(w, xp, carry, jnp.ones((B, T), bool), **kw)
    with pytest.raises(ValueError, match=r"b_hn must be \(H,\)"):
        pallas_rnn.gru_scan(w[:, :3 * H], jnp.zeros((H + 1,)), xp[..., :3 * H], carry[0],
                            gates=gru_gates)


def _lower_for_cuda(kind, batch, hidden):
    """The StableHLO of value-and-gradient of one kernel pair, lowered for CUDA."""
    rng = np.random.default_rng(0)
    G = 4 if kind == "lstm" else 3
    w = jnp.asarray(rng.normal(size=(hidden, G * hidden)), jnp.float32)
    xp = jnp.asarray(rng.normal(size=(T, batch, G * hidden)), jnp.float32)
    h0 = jnp.zeros((batch, hidden), jnp.float32)
    mask = jnp.ones((T, batch), bool)

    def loss(w, xp, h0):
        if kind == "lstm":
            (h, c), ys = pallas_rnn.lstm_scan(w, xp, (h0, h0), mask, gates=lstm_gates,
                                              gate_scale=lstm_gate_scale, reverse=True,
                                              resets=mask, interpret=False)
        else:
            h, ys = pallas_rnn.gru_scan(w, jnp.zeros((hidden,)), xp, h0, mask, gates=gru_gates,
                                        reverse=True, resets=mask, interpret=False)
        return jnp.sum(ys) + jnp.sum(h)

    fn = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    return fn.trace(w, xp, h0).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("kind,batch,hidden", [("gru", 40, 33), ("lstm", 17, 64)])
def test_kernels_lower_to_triton_for_cuda(kind, batch, hidden):
    # Pallas's Triton lowering runs here, on the CPU: every op of both kernel bodies has a
    # Triton rule, every loaded/stored tile is a power of two, and each dot is >= 16 wide.
    # (Compiling the Triton IR to PTX happens in XLA's GPU compiler, on a GPU.)
    text = _lower_for_cuda(kind, batch, hidden)
    calls = text.count("__gpu$xla.gpu.triton")
    assert calls == 2, calls  # the forward kernel and the backward kernel
    blocks = -(-batch // pallas_rnn.BLOCK_B)
    assert f"grid_x = {blocks} : i32" in text


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: the compiled Triton kernels run only there")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compiled_kernels_match_scan_on_gpu(kind):
    # Real GPU lowering at the widest H that fits, several batch blocks, padding of B. The
    # other tests run the compiled kernels too on a GPU; this one is the wide case.
    batch, hidden, steps = 40, 64, 9
    rng = np.random.default_rng(7)
    mask = np.arange(steps)[:, None] < rng.integers(0, steps + 1, size=batch)[None, :]
    resets = (rng.random((steps, batch)) < 0.2) & mask
    x, carry, w_y = inputs(make(kind, "scan", 1, hidden), seed=8, batch=batch, steps=steps)
    out = {}
    for impl in ("pallas", "scan"):
        graphdef, params = nnx.split(make(kind, impl, 1, hidden))
        for reverse in (False, True):
            out[impl, reverse] = value_and_grads(
                graphdef, params, x, carry, jnp.asarray(mask), jnp.asarray(resets), w_y,
                reverse=reverse)
    for reverse in (False, True):
        for a, b in zip(jax.tree.leaves(out["pallas", reverse]),
                        jax.tree.leaves(out["scan", reverse]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
