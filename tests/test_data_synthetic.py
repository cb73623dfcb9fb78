"""Synthetic tasks: each target is recomputed independently from the inputs, plus determinism."""

import math

import numpy as np
import pytest

from rnnjax.data import synthetic as syn


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: syn.adding_problem(s, 8, 20),
        lambda s: syn.copy_task(s, 8, num_symbols=4, delay=7),
        lambda s: syn.selective_copy_task(s, 8, seq_len=30, num_tokens=5),
        lambda s: syn.temporal_order_task(s, 8, 40),
        lambda s: syn.parity_task(s, 8, 12, min_len=3),
        lambda s: syn.addition_task(s, 8, 3),
    ],
)
def test_deterministic_given_seed(make):
    assert _same(make(123), make(123))
    assert _same(make(np.random.default_rng(5)), make(np.random.default_rng(5)))
    assert not _same(make(123), make(124))
    # A shared generator advances, so two calls give two different batches.
    g = np.random.default_rng(0)
    assert not _same(make(g), make(g))


def test_bad_seed_and_sizes():
    with pytest.raises(ValueError, match="seed"):
        syn.adding_problem("x", 2, 4)
    with pytest.raises(ValueError, match="seq_len"):
        syn.adding_problem(0, 2, 1)
    with pytest.raises(ValueError, match="batch_size"):
        syn.copy_task(0, 0)


def test_adding_problem_targets_and_markers():
    B, T = 64, 21
    d = syn.adding_problem(7, B, T)
    x, y = d["inputs"], d["targets"]
    assert x.shape == (B, T, 2) and x.dtype == np.float32
    assert y.shape == (B,) and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) <= {0.0, 1.0}
    for b in range(B):
        pos = np.flatnonzero(markers[b] == 1.0)
        assert len(pos) == 2
        assert pos[0] < T // 2 <= pos[1]
        expected = float(values[b, pos[0]]) + float(values[b, pos[1]])
        assert y[b] == pytest.approx(expected, abs=1e-6)


def test_adding_baseline_mse():
    assert syn.ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    y = syn.adding_problem(0, 20000, 6)["targets"].astype(np.float64)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.006)
    # Marker positions cover both halves uniformly, not just a few fixed steps.
    markers = syn.adding_problem(1, 2000, 10)["inputs"][..., 1]
    assert (markers.sum(0) > 0).all()


def test_copy_task_structure():
    B, ns, delay, A = 16, 5, 9, 6
    d = syn.copy_task(3, B, num_symbols=ns, delay=delay, alphabet_size=A)
    x, y, m = d["inputs"], d["targets"], d["loss_mask"]
    T = delay + 2 * ns
    assert x.shape == y.shape == m.shape == (B, T)
    assert x.dtype == y.dtype == np.int32 and m.dtype == np.float32
    delim = A + 1
    assert syn.copy_task_vocab_size(A) == A + 2
    for b in range(B):
        data = x[b, :ns]
        assert ((data >= 1) & (data <= A)).all()
        # Exactly one delimiter, at the end of the delay; blanks everywhere else after the data.
        assert np.flatnonzero(x[b] == delim).tolist() == [ns + delay - 1]
        rest = np.delete(x[b, ns:], delay - 1)
        assert (rest == syn.COPY_BLANK).all()
        counted = np.flatnonzero(m[b])
        assert counted.tolist() == list(range(T - ns, T))
        np.testing.assert_array_equal(y[b, counted], data)
        assert (y[b, : T - ns] == syn.COPY_BLANK).all()


def test_copy_task_baselines():
    assert syn.copy_task_baseline(10, 100, 8) == pytest.approx(math.log(8))
    assert syn.copy_task_baseline(10, 100, 8, masked=False) == pytest.approx(10 * math.log(8) / 120)
    # The symbols are uniform, so log(A) really is the entropy a memoryless model faces.
    d = syn.copy_task(0, 4000, num_symbols=10, delay=3, alphabet_size=8)
    sym = d["targets"][d["loss_mask"] > 0]
    p = np.bincount(sym, minlength=9)[1:] / sym.size
    assert -(p * np.log(p)).sum() == pytest.approx(math.log(8), abs=2e-3)


def test_selective_copy_recomputed():
    B, L, K, A = 32, 40, 6, 5
    d = syn.selective_copy_task(11, B, seq_len=L, num_tokens=K, alphabet_size=A)
    x, y, m = d["inputs"], d["targets"], d["loss_mask"]
    assert x.shape == y.shape == m.shape == (B, L + K)
    assert syn.selective_copy_vocab_size(A) == A + 2
    spacings = set()
    for b in range(B):
        body = x[b, :L]
        data = body[body != syn.SELECTIVE_COPY_NOISE]
        assert len(data) == K and ((data >= 1) & (data <= A)).all()
        assert (x[b, L:] == A + 1).all()
        np.testing.assert_array_equal(y[b, L:], data)
        assert (y[b, :L] == syn.SELECTIVE_COPY_NOISE).all()
        assert m[b].tolist() == [0.0] * L + [1.0] * K
        spacings.add(tuple(np.diff(np.flatnonzero(body))))
    assert len(spacings) > B // 2  # the positions are random per example, not a fixed pattern
    with pytest.raises(ValueError, match="num_tokens"):
        syn.selective_copy_task(0, 2, seq_len=3, num_tokens=4)


def test_selective_copy_positions_uniform():
    x = syn.selective_copy_task(0, 3000, seq_len=10, num_tokens=2)["inputs"][:, :10]
    freq = (x != 0).mean(0)
    np.testing.assert_allclose(freq, 0.2, atol=0.03)


def test_temporal_order_recomputed():
    B, T = 200, 50
    d = syn.temporal_order_task(4, B, T)
    x, y = d["inputs"], d["targets"]
    assert x.shape == (B, T) and y.shape == (B,) and x.dtype == y.dtype == np.int32
    tok = {t: i for i, t in enumerate(syn.TEMPORAL_ORDER_TOKENS)}
    for b in range(B):
        assert x[b, 0] == tok["B"] and x[b, -1] == tok["E"]
        pos = [t for t in range(T) if x[b, t] in (tok["X"], tok["Y"])]
        assert len(pos) == 2
        assert 5 <= pos[0] <= 10 and 25 <= pos[1] <= 30
        name = "".join(syn.TEMPORAL_ORDER_TOKENS[x[b, p]] for p in pos)
        assert syn.TEMPORAL_ORDER_CLASSES[y[b]] == name
        others = np.delete(x[b], [0, T - 1, *pos])
        assert ((others >= 0) & (others <= 3)).all()
    assert set(np.unique(y)) == {0, 1, 2, 3}


@pytest.mark.parametrize("min_len", [None, 1, 5])
def test_parity_recomputed(min_len):
    B, T = 300, 9
    d = syn.parity_task(2, B, T, min_len=min_len)
    x, y, n = d["inputs"], d["targets"], d["lengths"]
    assert x.shape == (B, T) and y.shape == n.shape == (B,)
    assert x.dtype == y.dtype == n.dtype == np.int32
    for b in range(B):
        bits = x[b, : n[b]].tolist()
        assert y[b] == sum(bits) % 2
        assert (x[b, n[b] :] == 0).all()
    lo = T if min_len is None else min_len
    assert n.min() == lo and n.max() == T
    assert 0.4 < y.mean() < 0.6
    with pytest.raises(ValueError, match="min_len"):
        syn.parity_task(0, 2, 4, min_len=5)


@pytest.mark.parametrize("reverse", [False, True])
def test_addition_recomputed(reverse):
    d = syn.addition_task(9, 100, max_digits=3, reverse_target=reverse)
    assert d["inputs"].shape == (100, 7) and d["targets"].shape == (100, 5)
    sums_seen = set()
    for b in range(100):
        src = syn.decode_addition(d["inputs"][b])
        assert len(src) == d["lengths"][b]
        a, c = src.split("+")
        ans = syn.decode_addition(d["targets"][b])
        want = str(int(a) + int(c))
        assert ans == (want[::-1] if reverse else want)
        sums_seen.add(int(a) + int(c))
        n = d["target_lengths"][b]
        assert n == len(want) + 1
        assert d["targets"][b, n - 1] == 3  # <eos>
        assert d["decoder_inputs"][b, 0] == 2  # <bos>
        np.testing.assert_array_equal(d["decoder_inputs"][b, 1:n], d["targets"][b, : n - 1])
        assert d["loss_mask"][b].sum() == n
    assert len(sums_seen) > 90


def _euler_mackey_glass(t_end, dt, tau=17.0, beta=0.2, gamma=0.1, n=10.0, x0=1.2):
    """Independent reference: forward Euler on a fine grid, constant history x0."""
    m = int(round(tau / dt))
    steps = int(round(t_end / dt))
    x = [x0] * (m + 1) + [0.0] * steps
    for k in range(m, m + steps):
        z = x[k - m]
        x[k + 1] = x[k] + dt * (beta * z / (1 + z**n) - gamma * x[k])
    every = int(round(1.0 / dt))
    return np.array(x[m::every])


def test_mackey_glass_matches_fine_euler():
    ref = _euler_mackey_glass(80.0, 1e-3)
    mg = syn.mackey_glass(81, discard=0.0)
    assert mg.dtype == np.float64 and mg.shape == (81,)
    assert mg[0] == 1.2
    np.testing.assert_allclose(mg, ref, atol=2e-3)  # measured gap: ~1e-4
    # The RK4 grid is converged: halving its step changes little.
    np.testing.assert_allclose(syn.mackey_glass(81, discard=0.0, dt=0.05), mg, atol=1e-4)


def test_mackey_glass_bounded_and_chaotic():
    x = syn.mackey_glass(1500)
    assert np.isfinite(x).all()
    assert 0.2 < x.min() and x.max() < 1.5
    assert x.std() > 0.1
    # A periodic orbit has a few distinct peak heights; the tau=17 attractor has a spread of them.
    inner = x[1:-1]
    peaks = inner[(inner > x[:-2]) & (inner > x[2:])]
    assert len(peaks) > 20
    assert peaks.std() > 0.02
    assert len(np.unique(np.round(peaks, 3))) > len(peaks) // 2


def test_mackey_glass_history_noise_and_errors():
    a = syn.mackey_glass(50, seed=1, history_noise=0.05)
    np.testing.assert_array_equal(a, syn.mackey_glass(50, seed=1, history_noise=0.05))
    assert not np.allclose(a, syn.mackey_glass(50, seed=2, history_noise=0.05))
    with pytest.raises(ValueError, match="multiple of dt"):
        syn.mackey_glass(10, tau=17.05, dt=0.1)
    with pytest.raises(ValueError, match="seed"):
        syn.mackey_glass(10, history_noise=0.1)


def test_mackey_glass_windows():
    s = syn.mackey_glass(30)
    x, y = syn.mackey_glass_windows(s, window=5, horizon=2, stride=3)
    assert x.shape == (8, 5, 1) and y.shape == (8, 2) and x.dtype == np.float32
    for i in range(8):
        np.testing.assert_allclose(x[i, :, 0], s[3 * i : 3 * i + 5], rtol=1e-6)
        np.testing.assert_allclose(y[i], s[3 * i + 5 : 3 * i + 7], rtol=1e-6)
