"""``impl="cudnn"`` for the LSTM (:mod:`rnnjax.nn.cudnn_rnn`), checked on any machine.

cuDNN itself needs an NVIDIA GPU. What is checked without one: the weight packing and
the length/direction mapping, by feeding the packed weights to
``jax.experimental.rnn.lstm_ref`` (pure JAX; JAX's own GPU tests hold it to cuDNN with
ragged lengths, bidirectional stacks and weight gradients) and comparing with
``impl="scan"`` on the same weights: outputs, final carries, and gradients mapped back
through the packing. The cells' whole cuDNN path (layers, stacks, both directions,
ragged lengths, length-0 rows, weight drop, multi-head) runs with the reference kernel
in the place of cuDNN's. The ``gpu``-marked tests run the real kernel and are skipped
elsewhere with a reason (tests/conftest.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn as jrnn

from rnnjax.nn import LSTMCell, LSTMState, Recurrent, cudnn_rnn, make_cell, make_rnn, torch_uniform

B, T, E, H = 4, 6, 3, 5
LENGTHS = np.array([6, 3, 1, 4], np.int32)
TOL = dict(rtol=2e-5, atol=2e-6)


def _x(seed=0, shape=(B, T, E)):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _cell_kwargs(**kw):
    # Random biases too: the default init (zeros, forget bias 1) would hide a gate mix-up.
    # PyTorch's uniform init everywhere: the default orthogonal init's eager QR per gate
    # costs seconds of compiling on a 2-core machine.
    init = torch_uniform(H)
    return {"bias_init": init, "kernel_init": init, "recurrent_kernel_init": init, **kw}


class CountingReference:
    """:func:`cudnn_rnn.lstm_reference` that counts its calls (so a test sees the cuDNN
    path ran, not the fallback)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return cudnn_rnn.lstm_reference(*args)


@pytest.fixture
def reference_kernel(monkeypatch):
    """Runs the cells' cuDNN path on this machine, with ``lstm_ref`` as the kernel."""
    kernel = CountingReference()
    monkeypatch.setattr(cudnn_rnn, "cuda_problem", lambda: None)
    monkeypatch.setattr(cudnn_rnn, "default_kernel", lambda: kernel)
    return kernel


def _stack_pseudo_layers(stack):
    """A make_rnn stack's cells in cuDNN's pseudo-layer order (forward-0, reverse-0, ...)."""
    cells = []
    for layer in stack.layers:
        cells += [layer.forward.cell, layer.backward.cell] if hasattr(layer, "forward") \
            else [layer.cell]
    return cells


def _weights(cell):
    return (cell.w_ih[...], cell.w_hh[...], cell.b_ih[...], cell.b_hh[...])


def _run(model, x, **call_kw):
    """``((carries, y), loss, (d loss/d params, d loss/d x))`` in one jitted call; the loss
    reads every output and every final carry leaf through fixed random weights."""
    graphdef, params = nnx.split(model)

    def loss(params, x, call_kw):
        carries, y = nnx.merge(graphdef, params)(x, return_carry=True, **call_kw)
        leaves = [y, *jax.tree.leaves(carries)]
        keys = jax.random.split(jax.random.key(7), len(leaves))
        value = sum(jnp.sum(a * jax.random.normal(k, a.shape)) for a, k in zip(leaves, keys))
        return value, (carries, y)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (value, out), grads = grad(params, x, call_kw)
    return out, value, grads


# ---------------------------------------------------------------------------
# The packing and the semantics, against jax.experimental.rnn's reference
# ---------------------------------------------------------------------------
def test_pack_round_trips_through_unpack_lstm_weights():
    rng = np.random.default_rng(0)
    layers = [tuple(rng.standard_normal(shape).astype(np.float32)
                    for shape in ((e, 4 * H), (H, 4 * H), (4 * H,), (4 * H,)))
              for e in (E, E, 2 * H, 2 * H)]  # forward-0, reverse-0, forward-1, reverse-1
    flat = cudnn_rnn.pack_lstm_weights(layers)
    assert flat.shape == (jrnn.get_num_params_in_lstm(E, H, 2, True),)
    w_ih, w_hh, b_ih, b_hh = jrnn.unpack_lstm_weights(flat, E, H, 2, True)
    for i, (a, b, c, d) in enumerate(layers):
        np.testing.assert_array_equal(w_ih[i], a.T)
        np.testing.assert_array_equal(w_hh[i], b.T)
        np.testing.assert_array_equal(b_ih[i], c)
        np.testing.assert_array_equal(b_hh[i], d)


def test_stack_scan_equals_lstm_ref_on_packed_weights_and_the_cudnn_path(reference_kernel):
    """A 2-layer bidirectional make_rnn stack, ragged lengths (traced, under jit), random
    initial carries: ``impl="scan"`` against (1) ``lstm_ref`` running the whole stack from
    the packed weights in one call, and (2) the same stack built with ``impl="cudnn"``,
    whose cells run per layer and direction on the reference kernel. Outputs, every final
    carry, and the gradients with respect to the inputs and the weights (mapped back
    through the packing for (1))."""
    x, lengths = _x(), jnp.asarray(LENGTHS)
    h0, c0 = 0.5 * jax.random.normal(jax.random.key(1), (2, 4, B, H))
    init = [(LSTMState(h0[0], c0[0]), LSTMState(h0[1], c0[1])),
            (LSTMState(h0[2], c0[2]), LSTMState(h0[3], c0[3]))]
    gy = jax.random.normal(jax.random.key(3), (B, T, 2 * H))
    gh, gc = jax.random.normal(jax.random.key(4), (2, 4, B, H))

    def loss(y, hs, cs):
        return jnp.sum(y * gy) + jnp.sum(hs * gh) + jnp.sum(cs * gc), (y, hs, cs)

    def ours(params, x, graphdef):
        carries, y = nnx.merge(graphdef, params)(x, seq_lengths=lengths, initial_carry=init,
                                                 return_carry=True)
        return loss(y, jnp.stack([s.h for pair in carries for s in pair]),
                    jnp.stack([s.c for pair in carries for s in pair]))

    def ref(flat, x, lengths):
        return loss(*cudnn_rnn.lstm_reference(x, h0, c0, flat, lengths, E, H, 2, 0.0, True))

    def packed(graphdef, state):
        return cudnn_rnn.pack_lstm_weights(
            [_weights(c) for c in _stack_pseudo_layers(nnx.merge(graphdef, state))])

    runs = {}
    for impl in ("scan", "cudnn"):
        graphdef, params = nnx.split(make_rnn("lstm", E, H, num_layers=2, bidirectional=True,
                                              rngs=nnx.Rngs(0), **_cell_kwargs(impl=impl)))
        (value, out), (g, gx) = jax.jit(jax.value_and_grad(ours, (0, 1), has_aux=True),
                                        static_argnums=2)(params, x, graphdef)
        runs[impl] = (value, out, packed(graphdef, g), gx)
    assert reference_kernel.calls == 4  # the cudnn stack, traced once: 2 layers x 2 directions
    (value, out), (g, gx) = jax.jit(jax.value_and_grad(ref, (0, 1), has_aux=True))(
        packed(graphdef, params), x, lengths)
    runs["lstm_ref"] = (value, out, g, gx)
    for name in ("lstm_ref", "cudnn"):
        _assert_same(runs[name][:2], runs["scan"][:2])
        # The packing is a permutation, so the gradients packed alike must agree.
        _assert_same(runs[name][2:], runs["scan"][2:], rtol=1e-4, atol=1e-5)
    y = np.asarray(runs["cudnn"][1][0])
    for b, n in enumerate(LENGTHS):  # padded outputs are exactly zero, as masked_scan's
        assert not y[b, n:].any()


def test_flip_within_reverses_each_row_in_its_length_and_is_its_own_inverse():
    x = jnp.arange(B * T, dtype=jnp.float32).reshape(B, T)
    got = np.asarray(cudnn_rnn.flip_within(x, jnp.asarray(LENGTHS)))
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(got[b, :n], np.asarray(x[b, :n])[::-1])
        np.testing.assert_array_equal(got[b, n:], np.asarray(x[b, n:]))
    np.testing.assert_array_equal(cudnn_rnn.flip_within(jnp.asarray(got), jnp.asarray(LENGTHS)),
                                  x)


# ---------------------------------------------------------------------------
# The cells' whole cuDNN path, with the reference kernel in cuDNN's place
# ---------------------------------------------------------------------------
def _pair(impl_a="cudnn", impl_b="scan", **kw):
    mk = lambda impl: LSTMCell(E, H, rngs=nnx.Rngs(0), **_cell_kwargs(impl=impl, **kw))  # noqa: E731
    return mk(impl_a), mk(impl_b)


def _assert_same(a, b, **tol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **(tol or TOL)), a, b)


def test_concrete_prefix_mask_and_length_zero_rows(reference_kernel):
    # A concrete mask is checked to be a prefix mask and turned into lengths; a row with
    # no valid step keeps its initial carry and outputs zeros (cuDNN rejects length 0).
    fast, plain = _pair()
    mask = jnp.arange(T)[None, :] < jnp.asarray([3, 0, 6, 0])[:, None]
    init = LSTMState(jnp.ones((B, H)), 2 * jnp.ones((B, H)))
    x = _x(2)
    for reverse in (False, True):
        got = Recurrent(fast, reverse=reverse)(x, mask=mask, initial_carry=init, return_carry=True)
        want = Recurrent(plain, reverse=reverse)(x, mask=mask, initial_carry=init,
                                                  return_carry=True)
        _assert_same(got, want)
        np.testing.assert_array_equal(got[0].c[1], 2 * jnp.ones(H))
    assert reference_kernel.calls == 2


@pytest.mark.parametrize("kw", [{"weight_drop": 0.3}, {"num_heads": 5}])
def test_weight_drop_and_multi_head_run_on_the_cudnn_path(reference_kernel, kw):
    # Weight drop: one DropConnect mask per call, drawn from the same stream as the
    # scan path's. Multi-head: cuDNN runs the block-masked (dense-shaped) w_hh.
    fast, plain = (LSTMCell(E, H, rngs=nnx.Rngs(0, dropout=1), **_cell_kwargs(impl=impl, **kw))
                   for impl in ("cudnn", "scan"))
    x, lengths = _x(3), jnp.asarray(LENGTHS)
    got = Recurrent(fast)(x, seq_lengths=lengths, return_carry=True)
    want = Recurrent(plain)(x, seq_lengths=lengths, return_carry=True)
    _assert_same(got, want)
    assert reference_kernel.calls == 1


# ---------------------------------------------------------------------------
# What cannot run: a clear error for "cudnn", the old path for "auto"
# ---------------------------------------------------------------------------
def test_cudnn_without_a_cuda_gpu_says_so():
    if cudnn_rnn.cuda_problem() is None:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ValueError, match="impl='cudnn' cannot apply: it needs an NVIDIA GPU"):
        LSTMCell(E, H, rngs=nnx.Rngs(0), **_cell_kwargs(impl="cudnn"))


@pytest.mark.parametrize("name", ["gru", "peephole_lstm", "layernorm_lstm", "rnn_tanh", "min_gru"])
def test_cudnn_on_other_cells_says_only_the_plain_lstm_has_it(name):
    with pytest.raises(ValueError, match=r"impl='cudnn' cannot apply: cuDNN's kernel .*computes "
                                         r"only the plain LSTM.*use impl='auto'"):
        make_cell(name, E, H, rngs=nnx.Rngs(0), impl="cudnn")


def test_cudnn_construction_errors(reference_kernel):
    with pytest.raises(ValueError, match="runs float32 only, this cell computes in bfloat16"):
        LSTMCell(E, H, rngs=nnx.Rngs(0), **_cell_kwargs(impl="cudnn", dtype=jnp.bfloat16))
    with pytest.raises(ValueError, match="cannot apply: zoneout"):
        LSTMCell(E, H, rngs=nnx.Rngs(0, dropout=1), **_cell_kwargs(impl="cudnn", zoneout=0.1))


def test_cudnn_call_errors_and_auto_falls_back_to_the_old_path(reference_kernel):
    fast, plain = _pair()
    auto, _ = _pair("auto")
    x = _x(4)
    gappy = jnp.ones((B, T), bool).at[0, 2].set(False)
    resets = jnp.zeros((B, T), bool).at[1, 3].set(True)
    cases = [({"mask": gappy}, "not a prefix mask"),
             ({"resets": resets}, "packed-segment resets")]
    for kw, why in cases:
        with pytest.raises(ValueError, match=f"impl='cudnn' cannot apply: .*{why}.*impl='auto'"):
            Recurrent(fast)(x, **kw)
        _assert_same(Recurrent(auto)(x, **kw), Recurrent(plain)(x, **kw))
    with pytest.raises(ValueError, match="under jit cannot be checked.*pass seq_lengths"):
        jax.jit(lambda x, m: Recurrent(fast)(x, mask=m))(x, gappy)
    with pytest.raises(ValueError, match=r"must be float32 for cuDNN, got \['float32', "
                                         r"'float64'\]"):
        with jax.enable_x64(True):
            Recurrent(fast)(x.astype(jnp.float64))
    assert reference_kernel.calls == 0


def test_auto_on_this_backend_is_the_projection_then_scan_projected():
    """On a machine without CUDA, impl='auto' must run exactly what it ran before cuDNN
    existed: the hoisted projection, then the cell's scan_projected (bitwise)."""
    if cudnn_rnn.cuda_problem() is None:
        pytest.skip("this machine has a CUDA GPU, where auto may take cuDNN")
    cell = LSTMCell(E, H, rngs=nnx.Rngs(0), **_cell_kwargs())
    x, lengths = _x(5), jnp.asarray(LENGTHS)
    carry, y = Recurrent(cell, reverse=True)(x, seq_lengths=lengths, return_carry=True)
    x_tm = jnp.swapaxes(x, 0, 1)
    mask = (jnp.arange(T)[None, :] < lengths[:, None]).T
    c2, ys = cell.scan_projected(cell.initialize_carry(B), cell.project_inputs(x_tm), mask,
                                 reverse=True)
    jax.tree.map(np.testing.assert_array_equal, (carry, y), (c2, jnp.swapaxes(ys, 0, 1)))


# ---------------------------------------------------------------------------
# The real kernel (skipped without a CUDA GPU, tests/conftest.py)
# ---------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("bidirectional", [False, True])
def test_real_cudnn_equals_scan_values_and_grads(bidirectional):
    x, lengths = _x(6, (B, 9, E)), jnp.asarray([9, 4, 1, 7])
    with jax.default_matmul_precision("highest"):  # exact float32 on both sides, no TF32
        got, want = (_run(make_rnn("lstm", E, H, num_layers=2, bidirectional=bidirectional,
                                   rngs=nnx.Rngs(0), **_cell_kwargs(impl=impl)),
                          x, seq_lengths=lengths) for impl in ("cudnn", "scan"))
    _assert_same(got[:2], want[:2], rtol=1e-5, atol=1e-5)
    _assert_same(got[2], want[2], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_real_cudnn_is_what_auto_takes_on_a_cuda_gpu(monkeypatch):
    kernel = CountingReference()
    real = cudnn_rnn.default_kernel()

    def counting(*args):
        kernel.calls += 1
        return real(*args)

    monkeypatch.setattr(cudnn_rnn, "default_kernel", lambda: counting)
    cell = LSTMCell(E, H, rngs=nnx.Rngs(0), **_cell_kwargs())
    Recurrent(cell)(_x(7), seq_lengths=jnp.asarray(LENGTHS))
    assert kernel.calls == 1
