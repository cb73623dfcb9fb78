"""Pretrained word vectors (GloVe text format) aligned with a ``Vocabulary``.

The result is a plain (V, E) float32 matrix whose row ``i`` is the vector of vocabulary id ``i``,
ready to initialise an embedding table. Rows for words missing from the file are random normal
from a fixed seed (drawn for the whole matrix up front, so they do not depend on which words the
file happens to contain), and the ``<pad>`` row is zero.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from rnnjax.data.text import PAD_ID, SPECIALS, Vocabulary

__all__ = ["GloveEmbeddings", "load_glove"]


class GloveEmbeddings(NamedTuple):
    """Result of ``load_glove``; unpacks as ``matrix, num_found, found``.

    Attributes:
      matrix: (V, E) float32, row ``i`` for vocabulary id ``i``.
      num_found: number of non-special vocabulary words that got a pretrained vector.
      found: (V,) bool, True where the row came from the file.
    """

    matrix: np.ndarray
    num_found: int
    found: np.ndarray


def load_glove(
    path: str | os.PathLike,
    vocab: Vocabulary,
    *,
    init_scale: float = 0.1,
    seed: int = 0,
    dim: int | None = None,
    match_lowercase: bool = True,
) -> GloveEmbeddings:
    """Read a GloVe ``.txt`` file (``word v1 ... vE`` per line, space separated).

    Every line's field count is checked, but only the lines of vocabulary words are parsed as
    numbers, which keeps a 400k-word file fast to scan. When a word appears twice the first line
    wins. With ``match_lowercase``, a vocabulary word that is not in the file exactly (``"The"``)
    takes the vector of its lowercase form (``"the"``), as the GloVe 6B vectors are lowercased.

    Args:
      path: the ``.txt`` file (e.g. ``glove.6B.100d.txt`` from ``fetch("glove.6B")``).
      vocab: the vocabulary to align with; the matrix has ``len(vocab)`` rows.
      init_scale: std of the normal init for words not in the file.
      seed: seed of that init.
      dim: E. When None it is read from the first line and each line must have exactly E + 1
        fields. When given, the word is everything before the last E fields, so words that
        contain spaces (as in glove.840B) are read correctly.
      match_lowercase: fall back to the lowercase form of a word.

    Returns:
      ``GloveEmbeddings(matrix (V, E) float32, num_found, found (V,) bool)``.

    Raises:
      FileNotFoundError: missing file.
      ValueError: an empty file, a line with the wrong number of fields, or a non-numeric value in
        a needed line; the message names the file and line. (A line whose word is not valid UTF-8
        cannot match a vocabulary word and is skipped.)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GloVe file not found: {path!r}.")
    if dim is not None and dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    wanted: dict[str, list[int]] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok in SPECIALS:
            continue
        wanted.setdefault(tok, []).append(i)
    # Exact matches take precedence over lowercase fallbacks, whatever the file order.
    lower_wanted: dict[str, list[int]] = {}
    if match_lowercase:
        for tok, ids in wanted.items():
            low = tok.lower()
            if low != tok:
                lower_wanted.setdefault(low, []).extend(ids)
    exact: dict[int, np.ndarray] = {}
    fallback: dict[int, np.ndarray] = {}
    first_dim_line = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if line.endswith(b" "):  # some exports leave a trailing space
                line = line.rstrip(b" ")
            if not line:
                continue
            parts = line.split(b" ")
            if dim is None:
                dim = len(parts) - 1
                first_dim_line = lineno
                if dim < 1:
                    raise ValueError(
                        f"{path}: line {lineno} has no vector values; expected 'word v1 ... vE'."
                    )
            if (first_dim_line is not None and len(parts) != dim + 1) or len(parts) < dim + 1:
                where = (
                    f"line {first_dim_line}" if first_dim_line is not None else "the dim argument"
                )
                raise ValueError(
                    f"{path}: line {lineno} has {len(parts) - 1} values after the word, expected "
                    f"{dim} (from {where}). If words contain spaces, pass dim explicitly."
                )
            wbytes = b" ".join(parts[:-dim])
            try:
                word = wbytes.decode("utf-8")
            except UnicodeDecodeError:
                continue  # cannot equal any (str) vocabulary word, so it is never needed
            targets = []
            if word in wanted:
                targets.append((exact, wanted[word]))
            if word in lower_wanted:
                targets.append((fallback, lower_wanted[word]))
            if not targets:
                continue
            try:
                vec = np.array(parts[-dim:], dtype=np.float32)
            except ValueError:
                raise ValueError(
                    f"{path}: line {lineno} (word {word!r}) has a non-numeric value."
                ) from None
            for table, ids in targets:
                for i in ids:
                    table.setdefault(i, vec)
    if dim is None:
        raise ValueError(f"{path}: file is empty.")
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((len(vocab), dim)) * init_scale).astype(np.float32)
    found = np.zeros(len(vocab), bool)
    for table in (fallback, exact):  # exact last, so it overwrites a fallback
        for i, vec in table.items():
            matrix[i] = vec
            found[i] = True
    matrix[PAD_ID] = 0.0
    return GloveEmbeddings(matrix, int(found.sum()), found)
