"""Parity of rnnjax's recurrent stacks with ``torch.nn.RNN/LSTM/GRU`` (float32, CPU).

For every cell type, 1 and 2 layers, one and two directions, zero or given initial
states, full or ragged lengths (torch side: ``pack_padded_sequence`` with
``enforce_sorted=False``), the outputs, the final states and the gradients of a scalar
loss with respect to the inputs, the initial states and every torch weight must agree.
The weights come from the torch module through :func:`rnnjax.interop.from_torch`, and
the JAX gradients are mapped back to torch names through
:func:`rnnjax.interop.to_torch_state_dict`, so the weight mapping is tested as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.interop import from_torch, to_torch_state_dict
from rnnjax.nn import LSTMState

pytestmark = pytest.mark.torch

B, T, E, H = 4, 6, 3, 5
# Unsorted, with a length-1 row and a full row, so both enforce_sorted=False and the
# reverse direction's per-row start are exercised.
RAGGED = np.array([6, 2, 5, 1])
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
OUT_TOL = 1e-5
GRAD_TOL = 1e-4


def torch_rnn(torch, mode: str, num_layers: int, bidirectional: bool, bias: bool = True):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=True)
    if mode == "lstm":
        return torch.nn.LSTM(E, H, **kw)
    if mode == "gru":
        return torch.nn.GRU(E, H, **kw)
    return torch.nn.RNN(E, H, nonlinearity=mode.removeprefix("rnn_"), **kw)


def run_torch(torch, module, x, lengths, h0, c0, r_out, r_h, r_c):
    """Returns ``(out, h_n, c_n, grads)`` as numpy; grads keyed by torch parameter name."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.tensor(x, requires_grad=True)
    hx = None
    if h0 is not None:
        h0t = torch.tensor(h0, requires_grad=True)
        c0t = torch.tensor(c0, requires_grad=True) if c0 is not None else None
        hx = (h0t, c0t) if c0t is not None else h0t
    if lengths is None:
        out, state = module(xt, hx)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                      enforce_sorted=False)
        out_p, state = module(packed, hx)
        out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=T)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    loss = (out * torch.tensor(r_out)).sum() + (h_n * torch.tensor(r_h)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(r_c)).sum()
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    grads["input"] = xt.grad.numpy()
    if h0 is not None:
        grads["h0"] = h0t.grad.numpy()
        if c0 is not None:
            grads["c0"] = c0t.grad.numpy()
    c_np = None if c_n is None else c_n.detach().numpy()
    return out.detach().numpy(), h_n.detach().numpy(), c_np, grads


def carries_to_torch(carries, bidirectional: bool):
    """Per-layer rnnjax carries -> torch ``(h_n, c_n)`` ``(L*D, B, H)`` (c_n None if not LSTM).

    torch's ``h_n[2*k + d]`` is ``carries[k][d]`` (``carries[k]`` when unidirectional).
    """
    flat = [c for layer in carries for c in (layer if bidirectional else (layer,))]
    if isinstance(flat[0], LSTMState):
        return jnp.stack([c.h for c in flat]), jnp.stack([c.c for c in flat])
    return jnp.stack(flat), None


def torch_to_carries(h0, c0, num_layers: int, bidirectional: bool):
    """The inverse of :func:`carries_to_torch` for the initial states (numpy in)."""
    d = 2 if bidirectional else 1

    def one(i):
        return LSTMState(jnp.asarray(h0[i]), jnp.asarray(c0[i])) if c0 is not None \
            else jnp.asarray(h0[i])

    if bidirectional:
        return [(one(d * k), one(d * k + 1)) for k in range(num_layers)]
    return [one(k) for k in range(num_layers)]


def run_jax(stack, x, lengths, init, bidirectional, r_out, r_h, r_c):
    """Same loss as :func:`run_torch`; grads keyed like torch's via ``to_torch_state_dict``."""
    graphdef, params = nnx.split(stack)

    def loss_fn(params, x, init):
        model = nnx.merge(graphdef, params)
        carries, y = model(x, seq_lengths=lengths, initial_carry=init, return_carry=True)
        h_n, c_n = carries_to_torch(carries, bidirectional)
        loss = jnp.sum(y * r_out) + jnp.sum(h_n * r_h)
        if c_n is not None:
            loss = loss + jnp.sum(c_n * r_c)
        return loss, (y, h_n, c_n)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    (_, (y, h_n, c_n)), (g_params, g_x, g_init) = grad_fn(params, jnp.asarray(x), init)
    grads = to_torch_state_dict(nnx.merge(graphdef, g_params))
    grads["input"] = np.asarray(g_x)
    if init is not None:
        g_h, g_c = carries_to_torch(g_init, bidirectional)
        grads["h0"] = np.asarray(g_h)
        if g_c is not None:
            grads["c0"] = np.asarray(g_c)
    return np.asarray(y), np.asarray(h_n), None if c_n is None else np.asarray(c_n), grads


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("given_h0", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("mode", CELLS)
def test_outputs_states_and_gradients_match_torch(torch, mode, num_layers, bidirectional,
                                                  given_h0, ragged):
    module = torch_rnn(torch, mode, num_layers, bidirectional)
    d = 2 if bidirectional else 1
    rng = np.random.default_rng([CELLS.index(mode), num_layers, int(bidirectional), int(given_h0),
                                 int(ragged)])
    f32 = np.float32
    x = rng.normal(size=(B, T, E)).astype(f32)
    lengths = RAGGED if ragged else None
    h0 = rng.normal(size=(num_layers * d, B, H)).astype(f32) if given_h0 else None
    c0 = rng.normal(size=h0.shape).astype(f32) if given_h0 and mode == "lstm" else None
    r_out = rng.normal(size=(B, T, d * H)).astype(f32)
    r_h = rng.normal(size=(num_layers * d, B, H)).astype(f32)
    r_c = rng.normal(size=(num_layers * d, B, H)).astype(f32)

    out_t, h_t, c_t, g_t = run_torch(torch, module, x, lengths, h0, c0, r_out, r_h, r_c)
    stack = from_torch(module)
    init = torch_to_carries(h0, c0, num_layers, bidirectional) if given_h0 else None
    out_j, h_j, c_j, g_j = run_jax(stack, x, lengths, init, bidirectional, r_out, r_h, r_c)

    np.testing.assert_allclose(out_j, out_t, atol=OUT_TOL, rtol=0)
    if ragged:  # torch pads with exact zeros; so must we
        pad = np.arange(T)[None, :] >= RAGGED[:, None]
        assert np.all(out_j[pad] == 0.0)
    np.testing.assert_allclose(h_j, h_t, atol=OUT_TOL, rtol=0)
    if mode == "lstm":
        np.testing.assert_allclose(c_j, c_t, atol=OUT_TOL, rtol=0)
    else:
        assert c_j is None
    # Every torch parameter (all layers, directions, weights and biases) plus the
    # inputs and initial states must have a gradient on both sides.
    assert set(g_j) == set(g_t)
    for name in sorted(g_t):
        np.testing.assert_allclose(g_j[name], g_t[name], atol=GRAD_TOL, rtol=0,
                                   err_msg=f"gradient of {name}")


P = 3  # proj_size, < H


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("given_h0", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstmp_matches_torch_lstm_with_proj_size(torch, num_layers, bidirectional, given_h0,
                                                 ragged):
    """``torch.nn.LSTM(proj_size=P)`` against the ``lstmp`` cell: outputs ``(B, T, D*P)``,
    ``h_n`` ``(L*D, B, P)``, ``c_n`` ``(L*D, B, H)`` and every gradient, ``weight_hr`` too."""
    module = torch.nn.LSTM(E, H, num_layers=num_layers, bidirectional=bidirectional,
                           batch_first=True, proj_size=P)
    d = 2 if bidirectional else 1
    rng = np.random.default_rng([7, num_layers, int(bidirectional), int(given_h0), int(ragged)])
    f32 = np.float32
    x = rng.normal(size=(B, T, E)).astype(f32)
    lengths = RAGGED if ragged else None
    h0 = rng.normal(size=(num_layers * d, B, P)).astype(f32) if given_h0 else None
    c0 = rng.normal(size=(num_layers * d, B, H)).astype(f32) if given_h0 else None
    r_out = rng.normal(size=(B, T, d * P)).astype(f32)
    r_h = rng.normal(size=(num_layers * d, B, P)).astype(f32)
    r_c = rng.normal(size=(num_layers * d, B, H)).astype(f32)

    out_t, h_t, c_t, g_t = run_torch(torch, module, x, lengths, h0, c0, r_out, r_h, r_c)
    stack = from_torch(module)
    init = torch_to_carries(h0, c0, num_layers, bidirectional) if given_h0 else None
    out_j, h_j, c_j, g_j = run_jax(stack, x, lengths, init, bidirectional, r_out, r_h, r_c)

    np.testing.assert_allclose(out_j, out_t, atol=OUT_TOL, rtol=0)
    if ragged:
        pad = np.arange(T)[None, :] >= RAGGED[:, None]
        assert np.all(out_j[pad] == 0.0)
    np.testing.assert_allclose(h_j, h_t, atol=OUT_TOL, rtol=0)
    np.testing.assert_allclose(c_j, c_t, atol=OUT_TOL, rtol=0)
    assert set(g_j) == set(g_t) and any(k.startswith("weight_hr") for k in g_t)
    for name in sorted(g_t):
        np.testing.assert_allclose(g_j[name], g_t[name], atol=GRAD_TOL, rtol=0,
                                   err_msg=f"gradient of {name}")
