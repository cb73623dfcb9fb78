"""Univariate time series from CSV files: reading, chronological splits, scaling and windows.

The pipeline is ``read_csv_column`` -> ``split_series`` -> ``Standardizer.fit(train)`` ->
``make_windows``; ``windowed_splits`` does all but the reading in one call. Statistics are always
fitted on the training part only and then applied to every part, so nothing from the validation or
test future leaks into training.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
Shape letters: ``N`` windows, ``T`` window length, ``H`` forecast horizon.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Standardizer",
    "make_windows",
    "read_csv_column",
    "split_series",
    "windowed_splits",
]


def read_csv_column(
    path: str | os.PathLike,
    column: str | int,
    *,
    header: bool = True,
    delimiter: str = ",",
    encoding: str = "utf-8",
) -> np.ndarray:
    """Read one column of a CSV file as a float series, in file order.

    Args:
      path: the CSV file.
      column: a header name (needs ``header=True``) or a 0-based column index.
      header: whether the first non-blank row is a header (skipped when ``column`` is an index).
      delimiter: field separator.
      encoding: text encoding of the file.

    Returns:
      (N,) float64 values. Blank lines are skipped.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the column is missing, a row is too short, or a value is empty, non-numeric or
        not finite. The message names the file and the line number.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path!r}.")
    if isinstance(column, str) and not header:
        raise ValueError(f"column {column!r} is a name, which needs header=True; pass an index.")
    values: list[float] = []
    try:
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f, delimiter=delimiter)
            col: int | None = column if isinstance(column, int) else None
            if col is not None and col < 0:
                raise ValueError(f"column index must be >= 0, got {col}.")
            name = repr(column)
            seen_header = not header
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if not seen_header:
                    seen_header = True
                    names = [c.strip() for c in row]
                    if isinstance(column, str):
                        if column not in names:
                            raise ValueError(
                                f"{path}: column {column!r} not in the header "
                                f"(line {reader.line_num}); columns are {names}."
                            )
                        col = names.index(column)
                    elif col >= len(names):
                        raise ValueError(
                            f"{path}: column index {col} out of range; the header "
                            f"(line {reader.line_num}) has {len(names)} columns: {names}."
                        )
                    else:
                        name = f"{col} ({names[col]!r})"
                    continue
                assert col is not None
                if col >= len(row):
                    raise ValueError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, so column "
                        f"{name} is missing."
                    )
                raw = row[col].strip()
                try:
                    v = float(raw)
                except ValueError:
                    raise ValueError(
                        f"{path}: line {reader.line_num}, column {name}: value {raw!r} is not a "
                        "number; clean or fill that row."
                    ) from None
                if not math.isfinite(v):
                    raise ValueError(
                        f"{path}: line {reader.line_num}, column {name}: value {raw!r} is not "
                        "finite; fill or drop that row."
                    )
                values.append(v)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid {encoding} text ({e}).") from None
    if not values:
        raise ValueError(f"{path}: no data rows found in column {column!r}.")
    return np.asarray(values, dtype=np.float64)


def split_series(
    series: np.ndarray, train_fraction: float = 0.7, val_fraction: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chronological split: the first ``train_fraction`` is train, then val, the rest is test.

    Sizes are ``n_train = floor(N * train_fraction)``, ``n_val = floor(N * val_fraction)``,
    ``n_test = N - n_train - n_val``. ``val_fraction`` may be 0 (empty val part) and
    ``train_fraction + val_fraction`` may be 1 (empty test part); the train part must not be empty.

    Args:
      series: (N,) values.

    Returns:
      ``(train, val, test)``, contiguous 1-D copies in time order.
    """
    x = np.asarray(series)
    if x.ndim != 1:
        raise ValueError(f"series must be 1-D, got shape {x.shape}.")
    if not (0 < train_fraction <= 1 and 0 <= val_fraction and train_fraction + val_fraction <= 1):
        raise ValueError(
            "need 0 < train_fraction, 0 <= val_fraction and train_fraction + val_fraction <= 1; "
            f"got {train_fraction}, {val_fraction}."
        )
    n = len(x)
    n_train = int(math.floor(n * train_fraction + 1e-9))
    n_val = int(math.floor(n * val_fraction + 1e-9))
    if n_train == 0:
        raise ValueError(f"the train part of a {n}-point series is empty; use more data.")
    return x[:n_train].copy(), x[n_train : n_train + n_val].copy(), x[n_train + n_val :].copy()


@dataclass(frozen=True)
class Standardizer:
    """Affine scaling ``(x - mean) / std``, with statistics fitted on training data only."""

    mean: float
    std: float

    @classmethod
    def fit(cls, train: np.ndarray, min_std: float = 1e-12) -> Standardizer:
        """Fit mean and (population) std on the training part (any shape, all entries)."""
        x = np.asarray(train, dtype=np.float64)
        if x.size == 0:
            raise ValueError("cannot fit a Standardizer on an empty array.")
        mean, std = float(x.mean()), float(x.std())
        if not std > min_std:
            raise ValueError(
                f"training data is constant (std={std}); scaling would divide by zero. "
                "Use a longer or different training range."
            )
        return cls(mean, std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std``; keeps the float dtype of ``x`` (ints become float64)."""
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return ((x - self.mean) / self.std).astype(dtype)

    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        """``y * std + mean``: maps scaled values (e.g. predictions) back to data units."""
        y = np.asarray(y)
        dtype = y.dtype if np.issubdtype(y.dtype, np.floating) else np.float64
        return (y * self.std + self.mean).astype(dtype)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Standardizer:
        return cls(float(d["mean"]), float(d["std"]))


def make_windows(
    series: np.ndarray,
    window: int,
    horizon: int = 1,
    stride: int = 1,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a series into (input window, following horizon) pairs.

    Window ``i`` reads ``series[s : s + T]`` with ``s = i * stride`` and its target is
    ``series[s + T : s + T + H]``, the ``H`` values right after it.

    Args:
      series: (N_points,) values.
      window: T >= 1.
      horizon: H >= 1.
      stride: step between window starts (>= 1).
      dtype: output dtype.

    Returns:
      ``inputs`` (N, T, 1) and ``targets`` (N, H), ``N = (N_points - T - H) // stride + 1``.
    """
    x = np.asarray(series)
    if x.ndim != 1:
        raise ValueError(f"series must be 1-D, got shape {x.shape}.")
    for name, v in (("window", window), ("horizon", horizon), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}.")
    span = window + horizon
    if len(x) < span:
        raise ValueError(
            f"series of length {len(x)} is shorter than window + horizon = {span}; "
            "use a shorter window or more data."
        )
    views = np.lib.stride_tricks.sliding_window_view(x, span)[::stride]
    inputs = np.ascontiguousarray(views[:, :window, None], dtype=dtype)
    targets = np.ascontiguousarray(views[:, window:], dtype=dtype)
    return inputs, targets


def windowed_splits(
    series: np.ndarray,
    window: int,
    horizon: int = 1,
    *,
    train_fraction: float = 0.7,
    val_fraction: float = 0.15,
    stride: int = 1,
    normalize: bool = True,
    context_from_previous: bool = True,
) -> tuple[dict[str, dict[str, np.ndarray]], Standardizer | None]:
    """Split chronologically, scale with train statistics, and window each part.

    With ``context_from_previous`` the val (test) windows may read their inputs from the last
    ``T`` points of the previous part, while every target lies inside its own part. That is not a
    leak (the past is known at forecast time) and it keeps the first targets of each part usable.

    Returns:
      ``({"train": {"inputs", "targets"}, "val": {...}, "test": {...}}, scaler)`` with inputs
      (N, T, 1) float32 and targets (N, H) float32 in scaled units; ``scaler`` is None when
      ``normalize`` is False. A part too short to hold a single window gets arrays with N = 0.
    """
    train, val, test = split_series(series, train_fraction, val_fraction)
    scaler = Standardizer.fit(train) if normalize else None
    parts = [train, val, test]
    if scaler is not None:
        parts = [scaler.transform(p.astype(np.float64)) for p in parts]
    out: dict[str, dict[str, np.ndarray]] = {}
    history = np.zeros(0)
    for name, part in zip(("train", "val", "test"), parts):
        ctx = history[-window:] if context_from_previous else history[:0]
        full = np.concatenate([ctx, part])
        # Windows must end (in targets) inside `part`, so they start at or after len(ctx) - T.
        if len(full) >= window + horizon and len(part) >= horizon:
            x, y = make_windows(full, window, horizon, stride)
        else:
            x = np.zeros((0, window, 1), np.float32)
            y = np.zeros((0, horizon), np.float32)
        out[name] = {"inputs": x, "targets": y}
        history = np.concatenate([history, part])
    return out, scaler
