"""The cell protocol: a cell defined outside rnnjax works everywhere, and the layering holds.

A tiny cell written here, with only ``project_inputs``, ``step_projected`` and
``initialize_carry`` and one ``register_cell`` call, is checked against a numpy
float64 transcription in ``make_rnn`` (stacked, bidirectional, ragged lengths) and in
``diagnostics.diagnose`` (``∂L/∂h_t`` against a numpy backward pass through time).
The layering test reads the code's own imports: ``rnnjax.nn`` imports nothing above
itself, the fused machinery and the protocol import no concrete cell, and diagnostics
imports no concrete cell.
"""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnjax.diagnostics
import rnnjax.nn
from rnnjax.diagnostics import diagnose, hidden_grads, spectral_radii
from rnnjax.nn import (
    Bidirectional,
    RecurrentCell,
    StackedRecurrent,
    cell_options,
    known_cells,
    make_cell,
    make_rnn,
    register_cell,
)


class LeakyCell(RecurrentCell):
    """``h' = tanh(a ⊙ h + x W + b)``: a diagonal recurrence, written against the protocol only."""

    def __init__(self, in_features, hidden_features, *, scale: float = 1.0, rngs: nnx.Rngs,
                 **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        self.w = nnx.Param(scale * jax.random.normal(rngs.params(), (in_features,
                                                                     hidden_features)))
        self.b = nnx.Param(0.1 * jax.random.normal(rngs.params(), (hidden_features,)))
        self.a = nnx.Param(jax.random.uniform(rngs.params(), (hidden_features,), minval=0.5,
                                              maxval=1.2))

    def project_inputs(self, x):
        self.check_features(x)
        return x @ self._p("w") + self._p("b")

    def step_projected(self, carry, xp_t):
        h = jnp.tanh(self._p("a") * carry + xp_t)
        return h, h

    def initialize_carry(self, batch_shape, dtype=None):
        return self._zeros(batch_shape, dtype)


register_cell("test_leaky", LeakyCell)

B, T, E, H = 3, 7, 2, 4
LENGTHS = np.array([7, 2, 5])


def _numpy_layer(cell, x, lengths, reverse=False):
    """float64 reference: each row over its own valid steps; zeros past each length."""
    w, b, a = (np.asarray(p[...], np.float64) for p in (cell.w, cell.b, cell.a))
    y = np.zeros((x.shape[0], x.shape[1], w.shape[1]))
    hs = np.zeros((x.shape[0], w.shape[1]))
    for r in range(x.shape[0]):
        h = np.zeros(w.shape[1])
        steps = range(lengths[r])
        for t in (reversed(steps) if reverse else steps):
            h = np.tanh(a * h + x[r, t] @ w + b)
            y[r, t] = h
        hs[r] = h
    return hs, y


def test_a_protocol_only_cell_is_registered_and_built_by_name():
    assert "test_leaky" in known_cells()
    assert cell_options(LeakyCell) == {"scale", "dtype", "param_dtype"}
    cell = make_cell("test_leaky", E, H, scale=0.5, rngs=nnx.Rngs(0))
    assert isinstance(cell, LeakyCell) and cell.state_width == H
    assert cell.gate_activations(cell.initialize_carry(B), jnp.zeros((B, H))) == {}
    assert cell.recurrent_matrices() == {}
    with pytest.raises(ValueError, match=r"takes no option \['impl'\].*\['dtype', "
                                         r"'param_dtype', 'scale'\]"):
        make_cell("test_leaky", E, H, impl="scan", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown cell 'nope'; known cells: .*'test_leaky'"):
        make_cell("nope", E, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="LeakyCell: in_features and hidden_features"):
        LeakyCell(0, H, rngs=nnx.Rngs(0))


def test_a_protocol_only_cell_runs_in_stacked_bidirectional_layers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    model = make_rnn("test_leaky", E, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(1))
    assert isinstance(model, StackedRecurrent)
    assert all(isinstance(layer, Bidirectional) for layer in model.layers)
    carries, y = model(jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), return_carry=True)
    inp = x.astype(np.float64)
    for i, layer in enumerate(model.layers):
        hf, yf = _numpy_layer(layer.forward.cell, inp, LENGTHS)
        hb, yb = _numpy_layer(layer.backward.cell, inp, LENGTHS, reverse=True)
        np.testing.assert_allclose(np.asarray(carries[i][0]), hf, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(carries[i][1]), hb, atol=1e-5, rtol=0)
        inp = np.concatenate([yf, yb], axis=-1)
    np.testing.assert_allclose(np.asarray(y), inp, atol=1e-5, rtol=0)
    # The step form is the same cell: one step == the layer's first output.
    cell = model.layers[0].forward.cell
    _, y0 = cell(cell.initialize_carry(B), jnp.asarray(x[:, 0]))
    np.testing.assert_allclose(np.asarray(y0), _numpy_layer(cell, x, LENGTHS)[1][:, 0],
                               atol=1e-6, rtol=0)


def test_a_protocol_only_cell_is_diagnosed_with_no_other_change():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    v = rng.normal(size=(B, H)).astype(np.float32)
    model = make_rnn("test_leaky", E, H, rngs=nnx.Rngs(3))

    def loss_fn(m):
        carries, _ = m(jnp.asarray(x), seq_lengths=jnp.asarray(LENGTHS), return_carry=True)
        return jnp.sum(carries[0] * v)

    _, grads, record = hidden_grads(model, loss_fn)
    assert record["0"]["cell"] == "LeakyCell" and record["0"]["gates"] == {}
    # float64 backward through time: ∂L/∂h_{t-1} = ∂L/∂h_t ⊙ (1 - h_t²) ⊙ a.
    cell = model.layers[0].cell
    a = np.asarray(cell.a[...], np.float64)
    want = np.zeros((T, B, H))
    for r in range(B):
        hs = []
        h = np.zeros(H)
        for t in range(LENGTHS[r]):
            h = np.tanh(a * h + x[r, t] @ np.asarray(cell.w[...]) + np.asarray(cell.b[...]))
            hs.append(h)
        g = v[r].astype(np.float64)
        for t in range(LENGTHS[r] - 1, -1, -1):
            want[t, r] = g
            g = g * (1 - hs[t] ** 2) * a
    np.testing.assert_allclose(np.asarray(grads["0"]), want, rtol=1e-4, atol=1e-7)
    d = diagnose(model, loss_fn)
    assert set(d["grad_norms"]) == {"0"} and d["cells"] == {"0": "LeakyCell"}
    assert d["gate_saturation"] == {} and spectral_radii(model) == {}


# -- layering -------------------------------------------------------------------------
NN_DIR = pathlib.Path(rnnjax.nn.__file__).parent
CONCRETE_MODULES = {f"rnnjax.nn.{m}" for m in ("lstm", "gru", "elman", "min_cells", "lru")}
CONCRETE_CLASSES = {"LSTMCell", "GRUCell", "ElmanCell", "MinGRUCell", "MinLSTMCell", "LRUCell",
                    "GatedCell"}


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """``[(module, [names imported from it])]`` for every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names = [a.name for a in node.names]
            out.append((node.module, names))
            # `from rnnjax.nn import lstm` imports the module rnnjax.nn.lstm.
            out += [(f"{node.module}.{n}", []) for n in names]
    return out


def test_nn_imports_nothing_above_itself():
    files = sorted(NN_DIR.glob("*.py"))
    assert {"cell.py", "gated.py", "elman.py", "lstm.py", "gru.py", "fused.py"} <= {
        f.name for f in files}
    assert not (NN_DIR / "cells.py").exists()
    for f in files:
        for mod, _ in _imports(f):
            if mod.split(".")[0] == "rnnjax":
                assert mod.startswith("rnnjax.nn"), f"rnnjax/nn/{f.name} imports {mod}"


@pytest.mark.parametrize("name", ["fused.py", "cell.py", "scan.py", "types.py", "layers.py",
                                  "gated.py"])
def test_lower_nn_modules_import_no_concrete_cell(name):
    for mod, names in _imports(NN_DIR / name):
        assert mod not in CONCRETE_MODULES, f"{name} imports {mod}"
        if mod.startswith("rnnjax.nn"):
            assert not set(names) & CONCRETE_CLASSES, f"{name} imports {names} from {mod}"


def test_diagnostics_imports_no_concrete_cell():
    path = pathlib.Path(rnnjax.diagnostics.__file__)
    for mod, names in _imports(path):
        assert mod not in CONCRETE_MODULES, f"diagnostics imports {mod}"
        assert not set(names) & CONCRETE_CLASSES, f"diagnostics imports {names} from {mod}"
    assert "isinstance" not in path.read_text().replace("isinstance(node, RecurrentCell)", "")
