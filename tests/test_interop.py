"""Weights to and from PyTorch: :func:`from_torch`, :func:`load_torch_state_dict`,
:func:`to_torch_state_dict`.

Checked: every torch tensor lands (transposed) in the right cell of the right layer and
direction, from a module and from a bare state_dict (torch tensors or numpy arrays);
outputs then match torch; ``bias=False`` loads zero biases; the reverse mapping loads
strictly into a torch module with identical outputs; unsupported or inconsistent inputs
raise ValueErrors that say what to do. Tests without torch in their signature run
without torch installed (the state_dicts are numpy there).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.interop import from_torch, load_torch_state_dict, to_torch_state_dict
from rnnjax.nn import Bidirectional, Recurrent, make_rnn

pytestmark = pytest.mark.torch

B, T, E, H = 3, 4, 3, 5
MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def torch_rnn(torch, mode, num_layers=1, bidirectional=False, **kw):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=True, **kw)
    if mode == "lstm":
        return torch.nn.LSTM(E, H, **kw)
    if mode == "gru":
        return torch.nn.GRU(E, H, **kw)
    return torch.nn.RNN(E, H, nonlinearity=mode.removeprefix("rnn_"), **kw)


def directions(layer):
    if isinstance(layer, Bidirectional):
        return [(layer.forward, ""), (layer.backward, "_reverse")]
    return [(layer, "")]


def assert_weights_equal(stack, sd, bias=True):
    """Each rnnjax parameter equals its torch tensor (transposed for matrices)."""
    sd = {k: np.asarray(v.detach().numpy() if hasattr(v, "detach") else v) for k, v in sd.items()}
    for k, layer in enumerate(stack.layers):
        for rec, sfx in directions(layer):
            cell = rec.cell
            np.testing.assert_array_equal(np.asarray(cell.w_ih[...]), sd[f"weight_ih_l{k}{sfx}"].T)
            np.testing.assert_array_equal(np.asarray(cell.w_hh[...]), sd[f"weight_hh_l{k}{sfx}"].T)
            for ours, theirs in (("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                want = sd[f"{theirs}_l{k}{sfx}"] if bias else np.zeros_like(cell.b_ih[...])
                np.testing.assert_array_equal(np.asarray(getattr(cell, ours)[...]), want)


def torch_forward(torch, module, x):
    with torch.no_grad():
        out, _ = module(torch.from_numpy(x))
    return out.numpy()


def random_x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, E)).astype(np.float32)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_from_torch_module_maps_every_tensor(torch, mode, num_layers, bidirectional):
    module = torch_rnn(torch, mode, num_layers, bidirectional)
    stack = from_torch(module)
    assert stack.num_layers == num_layers
    d = 2 if bidirectional else 1
    for k, layer in enumerate(stack.layers):
        assert isinstance(layer, Bidirectional if bidirectional else Recurrent)
        assert layer.in_features == (E if k == 0 else d * H)
        assert layer.output_features == d * H
    # Outputs, states and gradients of these stacks against torch: test_nn_torch_parity.py.
    assert_weights_equal(stack, module.state_dict())


@pytest.mark.parametrize("mode", MODES)
def test_from_torch_bare_state_dict_with_mode(torch, mode):
    module = torch_rnn(torch, mode, num_layers=2, bidirectional=True)
    stack = from_torch(module.state_dict(), mode=mode)  # torch tensors
    assert stack.num_layers == 2 and isinstance(stack.layers[1], Bidirectional)
    assert_weights_equal(stack, module.state_dict())
    x = random_x(1)
    np.testing.assert_allclose(np.asarray(stack(jnp.asarray(x))), torch_forward(torch, module, x),
                               atol=1e-5, rtol=0)
    numpy_sd = {k: v.numpy() for k, v in module.state_dict().items()}
    assert_weights_equal(from_torch(numpy_sd, mode=mode), numpy_sd)


@pytest.mark.parametrize("mode", MODES)
def test_bias_false_loads_zero_biases(torch, mode):
    module = torch_rnn(torch, mode, num_layers=2, bias=False)
    assert_weights_equal(from_torch(module.state_dict(), mode=mode), module.state_dict(),
                         bias=False)
    stack = from_torch(module)
    assert_weights_equal(stack, module.state_dict(), bias=False)
    x = random_x(2)
    np.testing.assert_allclose(np.asarray(stack(jnp.asarray(x))), torch_forward(torch, module, x),
                               atol=1e-5, rtol=0)


def test_relu_and_tanh_state_dicts_need_mode_and_module_mode_must_agree(torch):
    module = torch_rnn(torch, "rnn_relu")
    with pytest.raises(ValueError, match="does not say its nonlinearity; pass mode='rnn_tanh'"):
        from_torch(module.state_dict())
    with pytest.raises(ValueError, match="mode='gru' disagrees with the module's 'rnn_relu'"):
        from_torch(module, mode="gru")
    with pytest.raises(ValueError, match="mode 'lstm' has 4 gates but weight_ih_l0 has 1"):
        from_torch(module.state_dict(), mode="lstm")
    with pytest.raises(ValueError, match="unknown mode 'elman'"):
        from_torch(module.state_dict(), mode="elman")
    with pytest.raises(ValueError, match="unsupported module Linear"):
        from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lstm_proj_size_loads_into_lstmp_cells_and_round_trips(torch, bidirectional):
    """``nn.LSTM(proj_size=P)`` -> ``lstmp`` cells (module and bare state_dict), outputs match
    torch, and ``to_torch_state_dict`` loads strictly back into a fresh torch module."""
    P = 2
    module = torch_rnn(torch, "lstm", num_layers=2, bidirectional=bidirectional, proj_size=P)
    x = np.random.default_rng(0).normal(size=(B, T, E)).astype(np.float32)
    want = torch_forward(torch, module, x)
    sd = module.state_dict()
    for source in (module, sd, {k: v.numpy() for k, v in sd.items()}):
        stack = from_torch(source)
        for k, layer in enumerate(stack.layers):
            for rec, sfx in directions(layer):
                assert type(rec.cell).__name__ == "LSTMPCell" and rec.cell.proj_size == P
                np.testing.assert_array_equal(np.asarray(rec.cell.w_hr[...]),
                                              sd[f"weight_hr_l{k}{sfx}"].numpy().T)
                np.testing.assert_array_equal(np.asarray(rec.cell.w_hh[...]),
                                              sd[f"weight_hh_l{k}{sfx}"].numpy().T)
        np.testing.assert_allclose(np.asarray(stack(jnp.asarray(x))), want, atol=1e-5, rtol=0)
    # rnnjax's own init -> torch -> identical outputs.
    ours = make_rnn("lstmp", E, H, num_layers=2, bidirectional=bidirectional, proj_size=P,
                    rngs=nnx.Rngs(5))
    back = torch_rnn(torch, "lstm", num_layers=2, bidirectional=bidirectional, proj_size=P)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(ours).items()},
                         strict=True)
    np.testing.assert_allclose(torch_forward(torch, back, x), np.asarray(ours(jnp.asarray(x))),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_to_torch_state_dict_round_trip_gives_identical_outputs(torch, mode):
    # rnnjax's own init (orthogonal blocks, forget bias), two layers, both directions.
    stack = make_rnn(mode, E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(3))
    sd = to_torch_state_dict(stack)
    module = torch_rnn(torch, mode, num_layers=2, bidirectional=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    x = random_x(4)
    np.testing.assert_allclose(torch_forward(torch, module, x), np.asarray(stack(jnp.asarray(x))),
                               atol=1e-5, rtol=0)


def test_time_major_stack_matches_batch_first_false(torch):
    module = torch.nn.GRU(E, H, num_layers=2, bidirectional=True)  # (T, B, E) inputs
    stack = from_torch(module, time_major=True)
    x = np.random.default_rng(5).normal(size=(T, B, E)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(stack(jnp.asarray(x))), torch_forward(torch, module, x),
                               atol=1e-5, rtol=0)


# -- no torch needed below -----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_numpy_state_dict_round_trip_without_torch(mode):
    stack = make_rnn(mode, E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(6))
    sd = to_torch_state_dict(stack)
    g = GATES[mode]
    assert sd["weight_ih_l0"].shape == (g * H, E)
    assert sd["weight_ih_l1_reverse"].shape == (g * H, 2 * H)
    assert sd["weight_hh_l1"].shape == (g * H, H)
    assert sd["bias_hh_l0_reverse"].shape == (g * H,)
    assert len(sd) == 2 * 2 * 4
    copy = from_torch(sd, mode=mode, rngs=nnx.Rngs(7))  # different init, then overwritten
    assert_weights_equal(copy, sd)
    assert_weights_equal(stack, to_torch_state_dict(copy))


def test_load_torch_state_dict_rejects_inconsistent_dicts():
    stack = make_rnn("gru", E, H, num_layers=1, rngs=nnx.Rngs(0))
    two_layers = to_torch_state_dict(make_rnn("gru", E, H, num_layers=2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"keys not used by this stack: \['bias_hh_l1'"):
        load_torch_state_dict(stack, two_layers)
    bad = dict(to_torch_state_dict(stack))
    bad["weight_hh_l0"] = bad["weight_hh_l0"][:, :-1]
    with pytest.raises(ValueError, match="weight_hh_l0 has shape"):
        load_torch_state_dict(stack, bad)
    missing = {k: v for k, v in to_torch_state_dict(stack).items() if k != "weight_ih_l0"}
    with pytest.raises(ValueError, match="missing 'weight_ih_l0'"):
        load_torch_state_dict(stack, missing)
    with pytest.raises(ValueError, match=r"unexpected state_dict keys \['fc.weight'\]"):
        from_torch({**to_torch_state_dict(stack), "fc.weight": np.zeros(2)})
