"""The cell contract: what every modern recurrent cell family must do on rnnjax's protocol.

One table, ``FAMILIES``, lists each registered family with small options, every time loop
its ``scan_projected`` has (``scan_mode`` / ``impl``), and the facts about it the checks
need (where ``perturbed_step`` puts ``eps``, which gates it reports, tolerances where a
family needs its own). For every family, and every time loop where the loop matters:

1. the step form is the sequence form: stepping ``cell(carry, x_t)`` (forward or reverse)
   from a non-zero carry gives ``scan_projected``'s outputs and final carry, whose first
   field is ``h``; and on ragged rows (one of them empty) ``scan_projected`` equals
   :func:`masked_scan` of ``step_projected``, the protocol's definition;
2. a padded row equals that row run alone: outputs, zeros past its length, final carry;
3. in ``make_rnn``'s stacked bidirectional layers, a padded row equals the row alone
   through both layers and directions, and the gradients are finite;
4. the diagnostics hooks: ``perturbed_step`` with ``eps = 0`` is ``step_projected``, a
   random ``eps`` lands on the state that flows on (``state_field``) and moves the output,
   and ``gate_activations`` reports the table's gates;
5. gradient through time measured by :mod:`rnnjax.diagnostics` through those hooks is
   ``(T, B, state_width)``, finite, non-zero on valid steps and zero past each length;
6. the family trains from a config: ``configs/adding.py:smoke`` with ``model.cell=<name>``
   and the cell's default options, at T=8. Nothing else trains
   these cells: tests/test_configs.py trains each config's default cell (lstm, gru,
   min_gru, attention) and tests/test_blocks.py steps them without a trainer.

Each family's own file keeps what only it has: references against the authors' packages,
float64 transcriptions of the cell's wiring, finite differences, its chunk forms.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnnjax.configlib import load_config
from rnnjax.diagnostics import diagnose, hidden_grads
from rnnjax.nn import make_cell, make_rnn
from rnnjax.nn.scan import masked_scan
from rnnjax.train.trainer import train_and_evaluate

E, B, T = 3, 3, 7  # cell sizes: input width, batch, time (H is the family's)
LENGTHS = np.array([7, 3, 1])  # ragged rows, for the row-alone checks
LENGTHS_EMPTY = np.array([7, 4, 0])  # with an empty row, for masked step == sequence


@dataclasses.dataclass(frozen=True)
class Family:
    """One cell family under the contract.

    name: the registered cell name (``rnnjax.nn.CELLS``).
    kwargs: small options used by every check.
    modes: each time loop of ``scan_projected``, as options over ``kwargs``.
    hidden: H.
    state_field: the carry field that ``perturbed_step`` adds ``eps`` to.
    gates: ``gate_activations``' gates -> their width (the last axis).
    seq_tol: ``(atol, rtol)`` of step form == sequence form.
    row_atol: of padded row == row alone.
    hook_atol: of ``perturbed_step(eps=0)`` == ``step_projected``; 0 is bitwise.
    """

    name: str
    kwargs: dict
    modes: tuple[dict, ...]
    hidden: int
    state_field: str
    gates: dict[str, int]
    seq_tol: tuple[float, float] = (1e-5, 1e-7)
    row_atol: float = 1e-5
    hook_atol: float = 1e-6


FAMILIES = [
    # sLSTM: one time loop (the default masked_scan of its step); its ragged rows
    # matched to 1e-6 in tests/test_slstm.py, and eps=0 adds an exact zero to h.
    Family("slstm", {"num_heads": 2}, ({},), hidden=8, state_field="h",
           gates={"f": 8, "o": 8, "z": 8}, row_atol=1e-6, hook_atol=0.0),
    # mLSTM: chunk 3 does not divide T=7, chunk 64 exceeds it; the chunkwise forms
    # reorder the stabilised sums, hence 2e-5 (as tests/test_mlstm.py had).
    Family("mlstm", {"num_heads": 2, "chunk_size": 3},
           ({"impl": "chunkwise"}, {"impl": "chunkwise", "chunk_size": 64},
            {"impl": "parallel"}, {"impl": "recurrent"}),
           hidden=8, state_field="c", gates={"f": 8, "o": 8}, seq_tol=(2e-5, 1e-5),
           hook_atol=0.0),
    Family("rglru", {"num_heads": 2},
           ({"scan_mode": "associative"}, {"scan_mode": "sequential"}),
           hidden=4, state_field="h", gates={"r": 4, "i": 4}),
    Family("mamba2", {"num_heads": 2, "state_size": 3, "chunk_size": 3},
           ({"scan_mode": "chunked"}, {"scan_mode": "quadratic"}, {"scan_mode": "sequential"}),
           hidden=4, state_field="s", gates={}),
    # beta is one scalar per head, so its width is num_heads.
    Family("gated_deltanet", {"num_heads": 2, "chunk_size": 3},
           ({"scan_mode": "chunked"}, {"scan_mode": "sequential"}),
           hidden=4, state_field="S", gates={"beta": 2}),
]


def _mode_id(mode: dict) -> str:
    return "-".join(str(v) for v in mode.values()) or "step"


BY_FAMILY = [pytest.param(f, id=f.name) for f in FAMILIES]
BY_MODE = [pytest.param(f, m, id=f"{f.name}-{_mode_id(m)}") for f in FAMILIES for m in f.modes]
DIRECTIONS = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])


def _cell(fam: Family, mode: dict | None = None):
    return make_cell(fam.name, E, fam.hidden, rngs=nnx.Rngs(0), **{**fam.kwargs, **(mode or {})})


def _perturb_carry(carry, key):
    """A non-zero initial carry, so that the checks see the state flow in."""
    leaves, tree = jax.tree.flatten(carry)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, v.shape, v.dtype)
                                     for k, v in zip(keys, leaves)])


def _close(a, b, atol, rtol=0.0):
    """Every leaf of ``a`` against ``b``; ``atol = rtol = 0`` is bitwise."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=rtol)


@pytest.mark.parametrize("fam,mode", BY_MODE)
@DIRECTIONS
def test_step_form_equals_sequence_form(fam, mode, reverse):
    cell = _cell(fam, mode)
    atol, rtol = fam.seq_tol
    x = jax.random.normal(jax.random.key(1), (T, B, E))
    c0 = _perturb_carry(cell.initialize_carry(B), jax.random.key(2))
    carry, ys_loop = c0, [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        carry, ys_loop[t] = cell(carry, x[t])
    final, ys = cell.scan_projected(c0, cell.project_inputs(x), reverse=reverse)
    np.testing.assert_allclose(ys, jnp.stack(ys_loop), atol=atol, rtol=rtol)
    _close(final, carry, atol, rtol)
    assert final._fields[0] == "h"
    # Ragged rows, one of them empty: the protocol's definition, masked_scan of the step.
    mask = jnp.asarray(np.arange(T)[:, None] < LENGTHS_EMPTY[None])
    xp = cell.project_inputs(x)
    want_c, want_y = masked_scan(cell.step_projected, c0, xp, mask, reverse=reverse)
    got_c, got_y = cell.scan_projected(c0, xp, mask, reverse=reverse)
    np.testing.assert_allclose(got_y, want_y, atol=atol, rtol=rtol)
    _close(got_c, want_c, atol, rtol)


@pytest.mark.parametrize("fam,mode", BY_MODE)
@DIRECTIONS
def test_ragged_row_equals_row_alone(fam, mode, reverse):
    cell = _cell(fam, mode)
    x = jax.random.normal(jax.random.key(1), (T, B, E))
    c0 = _perturb_carry(cell.initialize_carry(B), jax.random.key(2))
    mask = jnp.asarray(np.arange(T)[:, None] < LENGTHS[None])
    # Jitted: one program per shape compiles faster than each op eagerly (performance.md §15).
    run = nnx.jit(lambda c, c0, x, m: c.scan_projected(c0, c.project_inputs(x), m,
                                                        reverse=reverse))
    final, ys = run(cell, c0, x, mask)
    for r, n in enumerate(LENGTHS):
        row_c0 = jax.tree.map(lambda v, r=r: v[r : r + 1], c0)
        f1, y1 = run(cell, row_c0, x[:n, r : r + 1], None)
        np.testing.assert_allclose(ys[:n, r], y1[:, 0], atol=fam.row_atol)
        assert np.all(np.asarray(ys[n:, r]) == 0)
        _close(jax.tree.map(lambda v, r=r: v[r], final), jax.tree.map(lambda v: v[0], f1),
               fam.row_atol, 1e-7)


@pytest.mark.parametrize("fam", BY_FAMILY)
def test_in_stacked_bidirectional_layers(fam):
    model = make_rnn(fam.name, E, fam.hidden, num_layers=2, bidirectional=True,
                     rngs=nnx.Rngs(0), **fam.kwargs)
    x = jax.random.normal(jax.random.key(1), (B, T, E))
    # Jitted: one program per shape compiles faster than each op eagerly (performance.md §15).
    y = nnx.jit(lambda m, x, n: m(x, seq_lengths=n))(model, x, jnp.asarray(LENGTHS))
    assert y.shape == (B, T, 2 * fam.hidden) and np.all(np.isfinite(np.asarray(y)))
    # row 1 padded == row 1 alone, through both layers and directions
    y1 = nnx.jit(lambda m, x: m(x))(model, x[1:2, : LENGTHS[1]])
    np.testing.assert_allclose(y[1, : LENGTHS[1]], y1[0], atol=1e-5)
    assert np.all(np.asarray(y[1, LENGTHS[1]:]) == 0)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, seq_lengths=jnp.asarray(LENGTHS)) ** 2)))(model)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(g))


@pytest.mark.parametrize("fam", BY_FAMILY)
def test_diagnostics_hooks(fam):
    cell = _cell(fam)
    carry = _perturb_carry(cell.initialize_carry(B), jax.random.key(2))
    xp = cell.project_inputs(jax.random.normal(jax.random.key(1), (B, E)))
    zero = jnp.zeros((B, cell.state_width))
    c_ref, y_ref = cell.step_projected(carry, xp)
    c0, y0 = cell.perturbed_step(carry, xp, zero)
    _close((c0, y0), (c_ref, y_ref), fam.hook_atol)
    # eps reaches the output: d y / d eps is not zero
    jac = jax.jacrev(lambda e: cell.perturbed_step(carry, xp, e)[1])(zero)
    assert float(jnp.max(jnp.abs(jac))) > 0
    # a random eps lands on the state that flows to the next step, and moves the output
    eps = jax.random.normal(jax.random.key(3), (B, cell.state_width))
    c1, y1 = cell.perturbed_step(carry, xp, eps)
    s0, s1 = getattr(c0, fam.state_field), getattr(c1, fam.state_field)
    np.testing.assert_allclose(s1 - s0, eps.reshape(s0.shape), atol=1e-6)
    assert np.abs(np.asarray(y1 - y0)).max() > 1e-4
    gates = cell.gate_activations(carry, xp)
    assert {k: v[1].shape for k, v in gates.items()} == {g: (B, w) for g, w in fam.gates.items()}


@pytest.mark.parametrize("fam", BY_FAMILY)
def test_gradient_through_time_diagnostics(fam):
    """diagnostics measures ∂L/∂state through the cell's own hooks: (T, B, state_width),
    finite, non-zero on valid steps and zero past each row's length."""
    model = make_rnn(fam.name, E, fam.hidden, rngs=nnx.Rngs(0), **fam.kwargs)
    x = jax.random.normal(jax.random.key(1), (B, T, E))

    def loss_fn(m):
        return jnp.sum(m(x, seq_lengths=jnp.asarray(LENGTHS)) ** 2)

    _, grads, _ = hidden_grads(model, loss_fn)
    g = np.asarray(grads["0"])
    assert g.shape == (T, B, model.layers[0].cell.state_width)
    assert np.all(np.isfinite(g)) and np.abs(g[0, 0]).max() > 0
    for r, n in enumerate(LENGTHS):
        assert np.all(g[n:, r] == 0)
    d = diagnose(model, loss_fn)
    assert all(np.all(np.isfinite(v)) for v in d["grad_norms"].values())
    norms = np.asarray(d["grad_norms"]["0"])
    assert norms.shape == (T,) and norms.max() > 0
    assert set(d["gate_saturation"].get("0", {})) == set(fam.gates)


@pytest.mark.parametrize("fam", BY_FAMILY)
def test_trains_from_a_config(fam, tmp_path):
    # Compiling is the cost, not the steps. T=8 shortens the chunked forms' programs
    # (mlstm 8.3 s at the smoke's T=100 -> 5.5 s, measured on the shared 2-core CPU);
    # 2 steps instead of 4 saved nothing measurable, so the smoke's steps stay.
    cfg = load_config("configs/adding.py:smoke,T=8", [f"model.cell={fam.name}"])
    final = train_and_evaluate(cfg, tmp_path, progress=False)
    finite = [v for v in jax.tree.leaves(final) if isinstance(v, float)]
    assert finite and all(np.isfinite(finite)), final
