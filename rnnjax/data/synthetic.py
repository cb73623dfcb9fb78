"""Synthetic sequence tasks for probing memory and long-range credit assignment.

Each generator is a plain function of a seed (an ``int`` or a ``np.random.Generator``) and a few
documented sizes, and returns a ``dict`` of numpy arrays. Given the same seed and arguments the
output is bit-for-bit identical. Passing a ``Generator`` advances it, so successive calls with the
same generator give fresh batches, while the stream as a whole stays deterministic.

Tasks and their chance-level baselines (what a model with no memory can reach) are written next to
each generator, because a learning curve only means something against its baseline.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.

Shape letters: ``B`` batch, ``T`` time, ``S`` source time, ``E`` input features.
"""

from __future__ import annotations

import math

import numpy as np

from rnnjax.data.series import make_windows

__all__ = [
    "ADDING_BASELINE_MSE",
    "ADDITION_TOKENS",
    "COPY_BLANK",
    "SELECTIVE_COPY_NOISE",
    "TEMPORAL_ORDER_CLASSES",
    "TEMPORAL_ORDER_TOKENS",
    "adding_problem",
    "addition_task",
    "copy_task",
    "copy_task_baseline",
    "copy_task_vocab_size",
    "decode_addition",
    "mackey_glass",
    "mackey_glass_windows",
    "parity_task",
    "selective_copy_task",
    "selective_copy_vocab_size",
    "temporal_order_task",
]

SeedLike = int | np.random.Generator


def _as_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}.")
        return np.random.default_rng(int(seed))
    raise ValueError(
        f"seed must be an int or a np.random.Generator, got {type(seed).__name__}."
    )


def _check_pos(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Adding problem
# --------------------------------------------------------------------------------------------

#: MSE of the constant prediction 1.0 on the adding problem. The target is the sum of two
#: independent U[0, 1] values, so its mean is 1 and its variance 2 * (1/12) = 1/6 ~ 0.1667. A model
#: that does not look at the markers cannot beat this; "solved" usually means MSE well below 0.01.
ADDING_BASELINE_MSE: float = 1.0 / 6.0


def adding_problem(seed: SeedLike, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le et al. 2015).

    Each step carries two features: a value drawn from U[0, 1] and a marker. Exactly two markers
    are 1: one at a uniformly random step in the first half ``[0, T//2)`` and one in the second
    half ``[T//2, T)``. The target is the sum of the two marked values.

    Predicting 1.0 always gives MSE ``ADDING_BASELINE_MSE`` = 1/6 ~ 0.167 (see its comment).

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      seq_len: T >= 2.

    Returns:
      ``inputs``: (B, T, 2) float32; channel 0 the values, channel 1 the markers (0.0 or 1.0).
      ``targets``: (B,) float32, the sum of the two marked values.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("seq_len", seq_len, 2)
    rng = _as_rng(seed)
    half = seq_len // 2
    values = rng.random((batch_size, seq_len), dtype=np.float32)
    first = rng.integers(0, half, size=batch_size)
    second = rng.integers(half, seq_len, size=batch_size)
    markers = np.zeros((batch_size, seq_len), np.float32)
    rows = np.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    inputs = np.stack([values, markers], axis=-1)
    return {"inputs": inputs, "targets": targets.astype(np.float32)}


# --------------------------------------------------------------------------------------------
# Copy task
# --------------------------------------------------------------------------------------------

#: Token id of the blank in the copy task (also the target at positions that do not count).
COPY_BLANK = 0


def copy_task_vocab_size(alphabet_size: int = 8) -> int:
    """Number of token ids used by ``copy_task``: blank, ``alphabet_size`` symbols, delimiter."""
    return alphabet_size + 2


def copy_task(
    seed: SeedLike,
    batch_size: int,
    num_symbols: int = 10,
    delay: int = 100,
    alphabet_size: int = 8,
) -> dict[str, np.ndarray]:
    """The copy (memory) task of Arjovsky, Shah & Bengio 2016.

    Token ids: ``0`` blank, ``1..alphabet_size`` data symbols, ``alphabet_size + 1`` delimiter.
    Total length ``T = delay + 2 * num_symbols``. The input is ``num_symbols`` random data symbols,
    then ``delay - 1`` blanks, the delimiter, and ``num_symbols`` blanks. The target is blank for
    the first ``num_symbols + delay`` steps, then the data symbols in order.

    Memoryless baselines (a model that outputs blanks, then guesses uniformly):
      * over the masked positions only: cross-entropy ``log(alphabet_size)``, accuracy
        ``1 / alphabet_size``;
      * over all ``T`` positions (Arjovsky's reporting): ``num_symbols * log(alphabet_size) / T``.
    ``copy_task_baseline`` computes both.

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      num_symbols: how many symbols to remember (10 in the paper).
      delay: the paper's ``T``: steps from the end of the data to the end of the delimiter (>= 1).
      alphabet_size: number of distinct data symbols (8 in the paper).

    Returns:
      ``inputs``: (B, T) int32 token ids.
      ``targets``: (B, T) int32 token ids (blank where nothing is to be output).
      ``loss_mask``: (B, T) float32, 1.0 at the ``num_symbols`` output positions, else 0.0.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("num_symbols", num_symbols)
    _check_pos("delay", delay)
    _check_pos("alphabet_size", alphabet_size)
    rng = _as_rng(seed)
    total = delay + 2 * num_symbols
    data = rng.integers(1, alphabet_size + 1, size=(batch_size, num_symbols), dtype=np.int32)
    inputs = np.full((batch_size, total), COPY_BLANK, np.int32)
    inputs[:, :num_symbols] = data
    inputs[:, num_symbols + delay - 1] = alphabet_size + 1
    targets = np.full((batch_size, total), COPY_BLANK, np.int32)
    targets[:, num_symbols + delay :] = data
    loss_mask = np.zeros((batch_size, total), np.float32)
    loss_mask[:, num_symbols + delay :] = 1.0
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}


def copy_task_baseline(
    num_symbols: int = 10, delay: int = 100, alphabet_size: int = 8, masked: bool = True
) -> float:
    """Cross-entropy (nats per counted token) of the best memoryless model on ``copy_task``.

    With ``masked=True`` the loss is averaged over the output positions only: ``log(A)``. With
    ``masked=False`` it is averaged over all ``T = delay + 2 * num_symbols`` positions, where the
    blanks are predictable for free: ``num_symbols * log(A) / T`` (Arjovsky et al. 2016).
    """
    if masked:
        return math.log(alphabet_size)
    return num_symbols * math.log(alphabet_size) / (delay + 2 * num_symbols)


# --------------------------------------------------------------------------------------------
# Selective copy
# --------------------------------------------------------------------------------------------

#: Token id of the noise token in the selective copy task.
SELECTIVE_COPY_NOISE = 0


def selective_copy_vocab_size(alphabet_size: int = 8) -> int:
    """Number of token ids used by ``selective_copy_task``: noise, symbols, delimiter."""
    return alphabet_size + 2


def selective_copy_task(
    seed: SeedLike,
    batch_size: int,
    seq_len: int = 256,
    num_tokens: int = 16,
    alphabet_size: int = 8,
) -> dict[str, np.ndarray]:
    """Selective copying (Gu & Dao 2023, Mamba; also Feng et al. 2024, "Were RNNs all we needed?").

    Token ids: ``0`` noise, ``1..alphabet_size`` data, ``alphabet_size + 1`` delimiter. The first
    ``seq_len`` steps are noise, except ``num_tokens`` data tokens placed at distinct, uniformly
    random positions. Then come ``num_tokens`` delimiters, during which the model must output the
    data tokens in the order they appeared. Total length ``T = seq_len + num_tokens``.

    Unlike the copy task the spacing varies per example, so a time-invariant (convolutional)
    model cannot solve it by a fixed lag. Memoryless baseline on the masked positions:
    cross-entropy ``log(alphabet_size)``, accuracy ``1 / alphabet_size``.

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      seq_len: length of the scattered region (>= ``num_tokens``).
      num_tokens: how many data tokens to copy.
      alphabet_size: number of distinct data tokens.

    Returns:
      ``inputs``: (B, T) int32; ``targets``: (B, T) int32 (noise id outside the output part);
      ``loss_mask``: (B, T) float32, 1.0 at the last ``num_tokens`` positions.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("num_tokens", num_tokens)
    _check_pos("alphabet_size", alphabet_size)
    _check_pos("seq_len", seq_len)
    if seq_len < num_tokens:
        raise ValueError(
            f"seq_len ({seq_len}) must be >= num_tokens ({num_tokens}) so the tokens fit."
        )
    rng = _as_rng(seed)
    total = seq_len + num_tokens
    # The first num_tokens entries of a random permutation: distinct, uniform positions.
    positions = np.sort(np.argsort(rng.random((batch_size, seq_len)), axis=1)[:, :num_tokens], 1)
    data = rng.integers(1, alphabet_size + 1, size=(batch_size, num_tokens), dtype=np.int32)
    inputs = np.full((batch_size, total), SELECTIVE_COPY_NOISE, np.int32)
    np.put_along_axis(inputs, positions, data, axis=1)
    inputs[:, seq_len:] = alphabet_size + 1
    targets = np.full((batch_size, total), SELECTIVE_COPY_NOISE, np.int32)
    targets[:, seq_len:] = data
    loss_mask = np.zeros((batch_size, total), np.float32)
    loss_mask[:, seq_len:] = 1.0
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}


# --------------------------------------------------------------------------------------------
# Temporal order
# --------------------------------------------------------------------------------------------

#: Token ids of the temporal order task, in id order: four distractors a..d, the two markers X and
#: Y, the start symbol B and the end symbol E.
TEMPORAL_ORDER_TOKENS = ("a", "b", "c", "d", "X", "Y", "B", "E")
#: Class names of the temporal order task, in class-id order.
TEMPORAL_ORDER_CLASSES = ("XX", "XY", "YX", "YY")
_TO_X, _TO_Y, _TO_B, _TO_E = 4, 5, 6, 7


def temporal_order_task(
    seed: SeedLike, batch_size: int, seq_len: int = 100
) -> dict[str, np.ndarray]:
    """Temporal order (Hochreiter & Schmidhuber 1997, task 6a): which of X/Y came first?

    Step 0 is ``B`` and step ``T-1`` is ``E``; every other step is a random distractor from
    ``a..d``, except two: one in ``[round(0.1 T), round(0.2 T)]`` and one in
    ``[round(0.5 T), round(0.6 T)]`` (the paper's ``[10, 20]`` and ``[50, 60]`` for T = 100), each
    ``X`` or ``Y`` at random. Class ``2 * [first is Y] + [second is Y]``, i.e. 0 XX, 1 XY, 2 YX,
    3 YY. Token ids are in ``TEMPORAL_ORDER_TOKENS`` (vocabulary size 8). Chance: accuracy 1/4,
    cross-entropy ``log 4``.

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      seq_len: T >= 10.

    Returns:
      ``inputs``: (B, T) int32 token ids; ``targets``: (B,) int32 classes in ``[0, 4)``.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("seq_len", seq_len, 10)
    rng = _as_rng(seed)
    inputs = rng.integers(0, 4, size=(batch_size, seq_len), dtype=np.int32)
    inputs[:, 0] = _TO_B
    inputs[:, -1] = _TO_E
    t1 = rng.integers(round(0.1 * seq_len), round(0.2 * seq_len) + 1, size=batch_size)
    t2 = rng.integers(round(0.5 * seq_len), round(0.6 * seq_len) + 1, size=batch_size)
    first_y = rng.integers(0, 2, size=batch_size)
    second_y = rng.integers(0, 2, size=batch_size)
    rows = np.arange(batch_size)
    inputs[rows, t1] = _TO_X + first_y
    inputs[rows, t2] = _TO_X + second_y
    targets = (2 * first_y + second_y).astype(np.int32)
    return {"inputs": inputs, "targets": targets}


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


def parity_task(
    seed: SeedLike, batch_size: int, seq_len: int = 32, min_len: int | None = None
) -> dict[str, np.ndarray]:
    """Parity of a bit string: target 1 when the number of ones is odd.

    With ``min_len`` set, each example's length is uniform in ``[min_len, seq_len]`` and the tail is
    padded with 0. A zero bit does not change the parity, so the padding cannot change the answer:
    a model that ignores ``lengths`` sees the same target. Chance: accuracy 1/2, cross-entropy
    ``log 2``.

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      seq_len: T, the padded length (and the length of every example when ``min_len`` is None).
      min_len: shortest example (``1 <= min_len <= seq_len``), or None for fixed length.

    Returns:
      ``inputs``: (B, T) int32 bits in {0, 1} (also usable as token ids; vocabulary size 2).
      ``targets``: (B,) int32 in {0, 1}.
      ``lengths``: (B,) int32 valid lengths.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("seq_len", seq_len)
    rng = _as_rng(seed)
    bits = rng.integers(0, 2, size=(batch_size, seq_len), dtype=np.int32)
    if min_len is None:
        lengths = np.full(batch_size, seq_len, np.int32)
    else:
        _check_pos("min_len", min_len)
        if min_len > seq_len:
            raise ValueError(f"min_len ({min_len}) must be <= seq_len ({seq_len}).")
        lengths = rng.integers(min_len, seq_len + 1, size=batch_size, dtype=np.int32)
        bits[np.arange(seq_len)[None, :] >= lengths[:, None]] = 0
    targets = (bits.sum(axis=1) % 2).astype(np.int32)
    return {"inputs": bits, "targets": targets, "lengths": lengths}


# --------------------------------------------------------------------------------------------
# Integer addition (a small sequence-to-sequence task)
# --------------------------------------------------------------------------------------------

#: Tokens of ``addition_task`` in id order. The first four are the same specials, with the same
#: ids, as ``rnnjax.data.text.Vocabulary``; ``Vocabulary(ADDITION_TOKENS)`` builds the matching
#: vocabulary.
ADDITION_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", *"0123456789", "+")
_ADD_PAD, _ADD_BOS, _ADD_EOS, _ADD_DIGIT0, _ADD_PLUS = 0, 2, 3, 4, 14


def addition_task(
    seed: SeedLike, batch_size: int, max_digits: int = 3, reverse_target: bool = False
) -> dict[str, np.ndarray]:
    """Integer addition as sequence-to-sequence: source ``"a+b"``, target the digits of ``a + b``.

    ``a`` and ``b`` are uniform in ``[0, 10**max_digits)``. Token ids are ``ADDITION_TOKENS``
    (vocabulary size 15). The decoder is teacher-forced: ``decoder_inputs`` is ``<bos>`` followed by
    the answer, ``targets`` is the answer followed by ``<eos>``. With ``reverse_target`` the answer
    digits are written least significant first, which makes the carry local (an easier task).

    Args:
      seed: int or ``np.random.Generator``.
      batch_size: B >= 1.
      max_digits: digits per operand (>= 1).
      reverse_target: write the answer's digits in reverse order.

    Returns:
      ``inputs``: (B, S) int32 source tokens, ``S = 2 * max_digits + 1``, padded with 0.
      ``lengths``: (B,) int32 source lengths.
      ``decoder_inputs``: (B, T) int32, ``T = max_digits + 2``, padded with 0.
      ``targets``: (B, T) int32, padded with 0.
      ``target_lengths``: (B,) int32, answer digits + 1 (the ``<eos>``).
      ``loss_mask``: (B, T) float32, 1.0 on the first ``target_lengths`` positions.
    """
    _check_pos("batch_size", batch_size)
    _check_pos("max_digits", max_digits)
    if max_digits > 17:
        raise ValueError(f"max_digits must be <= 17 so the sums fit in int64, got {max_digits}.")
    rng = _as_rng(seed)
    hi = 10**max_digits
    a = rng.integers(0, hi, size=batch_size, dtype=np.int64)
    b = rng.integers(0, hi, size=batch_size, dtype=np.int64)
    src_len, tgt_len = 2 * max_digits + 1, max_digits + 2
    inputs = np.full((batch_size, src_len), _ADD_PAD, np.int32)
    lengths = np.zeros(batch_size, np.int32)
    dec_in = np.full((batch_size, tgt_len), _ADD_PAD, np.int32)
    targets = np.full((batch_size, tgt_len), _ADD_PAD, np.int32)
    tlens = np.zeros(batch_size, np.int32)
    for i in range(batch_size):
        src = [_ADD_DIGIT0 + int(c) for c in str(a[i])] + [_ADD_PLUS]
        src += [_ADD_DIGIT0 + int(c) for c in str(b[i])]
        ans = [_ADD_DIGIT0 + int(c) for c in str(a[i] + b[i])]
        if reverse_target:
            ans = ans[::-1]
        inputs[i, : len(src)] = src
        lengths[i] = len(src)
        dec_in[i, : len(ans) + 1] = [_ADD_BOS, *ans]
        targets[i, : len(ans) + 1] = [*ans, _ADD_EOS]
        tlens[i] = len(ans) + 1
    loss_mask = (np.arange(tgt_len)[None, :] < tlens[:, None]).astype(np.float32)
    return {
        "inputs": inputs,
        "lengths": lengths,
        "decoder_inputs": dec_in,
        "targets": targets,
        "target_lengths": tlens,
        "loss_mask": loss_mask,
    }


def decode_addition(ids: np.ndarray) -> str:
    """Token ids of ``addition_task`` (1-D int) to text, stopping at ``<eos>``, skipping pad/bos."""
    out = []
    for t in np.asarray(ids).tolist():
        if t == _ADD_EOS:
            break
        if t in (_ADD_PAD, _ADD_BOS):
            continue
        if not 0 <= t < len(ADDITION_TOKENS):
            raise ValueError(f"token id {t} is outside the addition vocabulary [0, 15).")
        out.append(ADDITION_TOKENS[t])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Mackey-Glass
# --------------------------------------------------------------------------------------------


def mackey_glass(
    num_samples: int,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    n: float = 10.0,
    x0: float = 1.2,
    dt: float = 0.1,
    sample_every: float = 1.0,
    discard: float = 300.0,
    seed: SeedLike | None = None,
    history_noise: float = 0.0,
) -> np.ndarray:
    """The Mackey-Glass delay differential equation, sampled for forecasting benchmarks.

    ``dx/dt = beta * x(t - tau) / (1 + x(t - tau)**n) - gamma * x(t)``; with the defaults
    (tau = 17) the attractor is chaotic and ``x`` stays in about (0.4, 1.4).

    Integration scheme: classical RK4 with a fixed step ``dt`` on a history buffer of every grid
    value. ``tau / dt`` must be an integer ``m``, so the delayed values at the RK4 stages are grid
    points ``x[k - m]``, ``x[k - m + 1]``, and at the half step their mean (linear interpolation),
    which keeps the scheme second order in the delay term. The history is ``x(t) = x0`` for
    ``t <= 0``, optionally plus ``U[-history_noise, history_noise]`` noise per grid point (drawn
    from ``seed``) to get different trajectories. The first ``discard`` time units are dropped as
    transient, then every ``sample_every`` time units is returned.

    Args:
      num_samples: N, number of returned samples.
      tau, beta, gamma, n: equation parameters (defaults: the standard chaotic setting).
      x0: constant initial history.
      dt: RK4 step; ``tau / dt`` and ``sample_every / dt`` must be integers.
      sample_every: time between returned samples.
      discard: transient time dropped before the first sample (a multiple of ``dt``).
      seed: int or Generator for the history noise; unused when ``history_noise == 0``.
      history_noise: half-width of uniform noise added to the initial history.

    Returns:
      (N,) float64 series, ``x(discard + i * sample_every)`` for ``i in range(N)``.
    """
    _check_pos("num_samples", num_samples)
    if dt <= 0 or tau < dt:
        raise ValueError(f"need 0 < dt <= tau, got dt={dt}, tau={tau}.")

    def steps(name: str, value: float) -> int:
        k = round(value / dt)
        if abs(k * dt - value) > 1e-9 * max(1.0, abs(value)):
            raise ValueError(f"{name} ({value}) must be an integer multiple of dt ({dt}).")
        return k

    m = steps("tau", tau)
    every = steps("sample_every", sample_every)
    skip = steps("discard", discard)
    if every < 1 or skip < 0:
        raise ValueError("sample_every must be > 0 and discard >= 0.")
    total = skip + (num_samples - 1) * every
    hist = np.full(m + 1, float(x0))  # grid points t = -m*dt .. 0
    if history_noise > 0:
        if seed is None:
            raise ValueError("history_noise > 0 needs a seed.")
        hist += _as_rng(seed).uniform(-history_noise, history_noise, size=m + 1)
    # Plain Python floats: a scalar recursion is faster this way than with numpy scalars.
    x = hist.tolist() + [0.0] * total

    def delayed(z: float) -> float:
        return beta * z / (1.0 + z**n)

    for k in range(m, m + total):
        xk = x[k]
        d0 = delayed(x[k - m])
        d1 = delayed(x[k - m + 1])
        dh = delayed(0.5 * (x[k - m] + x[k - m + 1]))
        k1 = d0 - gamma * xk
        k2 = dh - gamma * (xk + 0.5 * dt * k1)
        k3 = dh - gamma * (xk + 0.5 * dt * k2)
        k4 = d1 - gamma * (xk + dt * k3)
        x[k + 1] = xk + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    out = np.asarray(x[m + skip :: every], dtype=np.float64)
    return out[:num_samples]


def mackey_glass_windows(
    series: np.ndarray, window: int, horizon: int = 1, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a 1-D series into forecasting windows; see ``rnnjax.data.series.make_windows``.

    Returns ``inputs`` (N, T, 1) float32 and ``targets`` (N, H) float32, where window ``i`` reads
    ``series[i*stride : i*stride + T]`` and predicts the next ``H`` values.
    """
    return make_windows(series, window, horizon, stride)
