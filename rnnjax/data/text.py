"""Text data: vocabularies, tokenisers, and loaders for language-model and TSV classification files.

Special token ids are fixed, so that padding, masking and decoding code elsewhere can rely on them
without a vocabulary object at hand:

    ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3.

A ``Vocabulary`` is saved as JSON next to each run, together with the tokeniser settings, so a
checkpoint can always be decoded again. Loaders read strict UTF-8 and fail loudly, naming the file
and the line, rather than guessing.

This module is numpy only: it must never import jax, flax or anything above ``rnnjax.data``.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BOS",
    "BOS_ID",
    "EOS",
    "EOS_ID",
    "LMCorpus",
    "PAD",
    "PAD_ID",
    "SPECIALS",
    "TSVDataset",
    "Tokenizer",
    "UNK",
    "UNK_ID",
    "Vocabulary",
    "char_tokenize",
    "encode_texts",
    "load_lm_corpus",
    "load_tsv_classification",
    "read_text",
    "word_tokenize",
]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)

_FORMAT = "rnnjax.vocabulary"
_VERSION = 1


class Vocabulary:
    """A bijection between tokens and int ids, with the four specials at ids 0..3.

    Build one from a token stream with ``Vocabulary.build``; construct one directly from the full
    ordered token list (specials first). Encoding maps unknown tokens to ``<unk>`` and counts them:
    ``encode(..., return_oov=True)`` returns the count for that call, and the running totals
    ``num_encoded`` / ``num_oov`` accumulate over calls (reset with ``reset_oov_stats``), so the
    OOV rate of a whole split can be logged.

    Attributes:
      tokens: tuple of V tokens in id order.
      meta: free-form JSON-serialisable dict saved with the vocabulary (build settings, tokeniser).
    """

    def __init__(self, tokens: Sequence[str], meta: Mapping[str, Any] | None = None):
        tokens = tuple(tokens)
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(
                f"a vocabulary must start with the specials {list(SPECIALS)} at ids 0..3, got "
                f"{list(tokens[:4])}; use Vocabulary.build or prepend them."
            )
        index: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise ValueError(f"token at id {i} is not a str: {t!r}.")
            if t in index:
                raise ValueError(f"duplicate token {t!r} at ids {index[t]} and {i}.")
            index[t] = i
        self.tokens: tuple[str, ...] = tokens
        self._index = index
        self.meta: dict[str, Any] = dict(meta or {})
        self.num_encoded = 0
        self.num_oov = 0

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Vocabulary:
        """Build from a token stream: the specials, then tokens by decreasing count.

        Ties are broken by the token string, so the result does not depend on stream order.
        Occurrences of the special strings themselves are not counted (they already have ids).

        Args:
          tokens: iterable of str tokens (e.g. the tokenised training split).
          min_freq: keep tokens seen at least this many times.
          max_size: at most this many entries in total, specials included (>= 4), or None.
          meta: extra JSON-serialisable information to save with the vocabulary.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}.")
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size counts the 4 specials, so it must be >= 4, got {max_size}.")
        counts = collections.Counter(tokens)
        for s in SPECIALS:
            counts.pop(s, None)
        kept = [t for t, c in counts.items() if c >= min_freq]
        kept.sort(key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        info = {"min_freq": min_freq, "max_size": max_size, **(meta or {})}
        return cls((*SPECIALS, *kept), meta=info)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, first={list(self.tokens[4:9])})"

    def token_to_id(self, token: str) -> int:
        """Id of ``token``, or ``UNK_ID`` when it is not in the vocabulary."""
        return self._index.get(token, UNK_ID)

    def id_to_token(self, i: int) -> str:
        """Token of id ``i``; raises ValueError outside ``[0, V)``."""
        if not 0 <= int(i) < len(self.tokens):
            raise ValueError(f"id {i} is outside the vocabulary range [0, {len(self.tokens)}).")
        return self.tokens[int(i)]

    def encode(
        self,
        tokens: Iterable[str],
        *,
        add_bos: bool = False,
        add_eos: bool = False,
        return_oov: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, int]:
        """Map tokens to ids; unknown tokens become ``UNK_ID`` and are counted.

        Returns:
          (N,) int32 ids (``N`` tokens, plus one per added ``<bos>`` / ``<eos>``), or
          ``(ids, n_oov)`` when ``return_oov``. The running totals ``num_encoded`` and ``num_oov``
          are updated either way (added specials are not counted).
        """
        get = self._index.get
        ids = [get(t, -1) for t in tokens]
        n_oov = ids.count(-1)
        self.num_encoded += len(ids)
        self.num_oov += n_oov
        arr = np.asarray(ids, dtype=np.int32)
        arr[arr < 0] = UNK_ID
        if add_bos or add_eos:
            arr = np.concatenate(
                [[BOS_ID] * add_bos, arr, [EOS_ID] * add_eos]
            ).astype(np.int32)
        return (arr, n_oov) if return_oov else arr

    def decode(self, ids: Iterable[int] | np.ndarray, *, skip_specials: bool = False) -> list[str]:
        """Map ids (1-D) back to tokens; with ``skip_specials`` drop ids 0..3."""
        flat = np.asarray(ids).reshape(-1).tolist() if isinstance(ids, np.ndarray) else list(ids)
        out = []
        for i in flat:
            if skip_specials and 0 <= i < len(SPECIALS):
                continue
            out.append(self.id_to_token(i))
        return out

    @property
    def oov_rate(self) -> float:
        """``num_oov / num_encoded`` over all ``encode`` calls since the last reset (0 if none)."""
        return self.num_oov / self.num_encoded if self.num_encoded else 0.0

    def reset_oov_stats(self) -> None:
        self.num_encoded = 0
        self.num_oov = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "tokens": list(self.tokens),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        if d.get("format") != _FORMAT or "tokens" not in d:
            raise ValueError(
                f"not an rnnjax vocabulary (expected format {_FORMAT!r} and a 'tokens' list)."
            )
        if d.get("version") != _VERSION:
            raise ValueError(f"unsupported vocabulary version {d.get('version')!r}; expected 1.")
        return cls(d["tokens"], meta=d.get("meta"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as UTF-8 JSON (written to a temporary file, then renamed)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file not found: {path!r}.")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a valid vocabulary JSON file ({e}).") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Tokenisers
# --------------------------------------------------------------------------------------------

# A word is a run of letters/digits/underscore; every other non-space character is its own token.
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def char_tokenize(text: str, lowercase: bool = False) -> list[str]:
    """One token per Unicode code point, spaces and newlines included (lossless)."""
    return list(text.lower() if lowercase else text)


def word_tokenize(text: str, lowercase: bool = False) -> list[str]:
    """Split into words (``\\w+`` runs) and single punctuation marks; whitespace is dropped.

    ``"Don't stop!"`` -> ``["Don", "'", "t", "stop", "!"]``. Not lossless: spacing is lost.
    """
    return _WORD_RE.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class Tokenizer:
    """A named tokeniser setting that can be saved with the vocabulary (``to_dict``/``from_dict``).

    Attributes:
      level: ``"char"`` or ``"word"``.
      lowercase: lowercase the text first.
    """

    level: str = "word"
    lowercase: bool = False

    def __post_init__(self):
        if self.level not in ("char", "word"):
            raise ValueError(f"tokenizer level must be 'char' or 'word', got {self.level!r}.")

    def __call__(self, text: str) -> list[str]:
        if self.level == "char":
            return char_tokenize(text, self.lowercase)
        return word_tokenize(text, self.lowercase)

    def detokenize(self, tokens: Iterable[str]) -> str:
        """Join tokens: exact inverse for ``char``; single spaces between words for ``word``."""
        return ("" if self.level == "char" else " ").join(tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tokenizer:
        return cls(level=str(d["level"]), lowercase=bool(d.get("lowercase", False)))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Read a whole text file strictly.

    Raises:
      FileNotFoundError: missing file.
      ValueError: a directory, an empty file, or bytes that are not valid ``encoding`` (the message
        gives the line and byte offset of the first bad byte).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file not found: {path!r}.")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: is not a regular file.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}: line {line} (byte {e.start}) is not valid {encoding}: {e.reason}. "
            "Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or pass its encoding."
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: file is empty.")
    return text.removeprefix("\ufeff")


@dataclass
class LMCorpus:
    """An encoded language-modelling corpus.

    Attributes:
      train: (N_train,) int32 token ids, the first part of the file.
      val: (N_val,) int32 token ids, the last part of the file.
      vocab: the vocabulary (built on the train part unless one was given).
      tokenizer: the tokeniser used.
      train_oov, val_oov: number of tokens of each part mapped to ``<unk>``.
    """

    train: np.ndarray
    val: np.ndarray
    vocab: Vocabulary
    tokenizer: Tokenizer
    train_oov: int = 0
    val_oov: int = 0


def load_lm_corpus(
    path: str | os.PathLike,
    *,
    tokenizer: Tokenizer | None = None,
    vocab: Vocabulary | None = None,
    val_fraction: float = 0.1,
    min_freq: int = 1,
    max_size: int | None = None,
    encoding: str = "utf-8",
) -> LMCorpus:
    """Load any text file as one token stream for a language model, split train/val by position.

    The split is deterministic and chronological: the last ``round(N * val_fraction)`` tokens are
    validation, so no random shuffle can put overlapping text on both sides. When ``vocab`` is None
    it is built from the train part only (``min_freq``, ``max_size``), and validation tokens it has
    never seen count as OOV, as they would at test time.

    Args:
      path: UTF-8 text file.
      tokenizer: defaults to ``Tokenizer("char")``.
      vocab: an existing vocabulary (e.g. loaded from a checkpoint) to encode with.
      val_fraction: in ``[0, 1)``.

    Returns:
      ``LMCorpus`` with (N_train,) and (N_val,) int32 id streams.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    tokenizer = tokenizer or Tokenizer("char")
    tokens = tokenizer(read_text(path, encoding))
    n_val = int(round(len(tokens) * val_fraction))
    if len(tokens) - n_val < 1 or (val_fraction > 0 and n_val < 1):
        raise ValueError(
            f"{os.fspath(path)}: {len(tokens)} tokens are too few for val_fraction={val_fraction}."
        )
    train_toks, val_toks = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    if vocab is None:
        vocab = Vocabulary.build(
            train_toks,
            min_freq=min_freq,
            max_size=max_size,
            meta={"tokenizer": tokenizer.to_dict()},
        )
    train, train_oov = vocab.encode(train_toks, return_oov=True)
    val, val_oov = vocab.encode(val_toks, return_oov=True)
    return LMCorpus(train, val, vocab, tokenizer, train_oov, val_oov)


@dataclass
class TSVDataset:
    """A text classification data set.

    Attributes:
      texts: N raw texts.
      labels: (N,) int32 class ids, indexes into ``label_names``.
      label_names: class names; sorted unless given explicitly to the loader.
      line_numbers: the 1-based file line of each example (for error reports).
    """

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    line_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def load_tsv_classification(
    path: str | os.PathLike,
    *,
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> TSVDataset:
    """Load ``label<TAB>text`` lines (the UCI SMS Spam Collection format).

    The line is split at its first tab; the label is stripped of surrounding spaces, the text is
    kept as is (a trailing ``\\r`` is dropped). Empty lines are skipped.

    Args:
      path: the TSV file (e.g. ``SMSSpamCollection``).
      label_names: fix the class order (e.g. the training set's names when loading a test file);
        an unseen label is then an error. By default the sorted set of labels in the file, so
        ``["ham", "spam"]`` -> ham = 0, spam = 1.

    Raises:
      FileNotFoundError, or ValueError naming the file and line for: not UTF-8, empty file, a line
      without a tab, an empty label, or a label not in ``label_names``.
    """
    text = read_text(path, encoding)
    path = os.fspath(path)
    texts, raw_labels, lines = [], [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(
                f"{path}: line {lineno} has no tab; expected 'label<TAB>text', got {line[:60]!r}."
            )
        label, body = line.split("\t", 1)
        label = label.strip()
        if not label:
            raise ValueError(f"{path}: line {lineno} has an empty label.")
        texts.append(body)
        raw_labels.append(label)
        lines.append(lineno)
    if not texts:
        raise ValueError(f"{path}: no examples found.")
    if label_names is None:
        names = sorted(set(raw_labels))
    else:
        names = list(label_names)
        if len(set(names)) != len(names):
            raise ValueError(f"label_names has duplicates: {names}.")
    index = {n: i for i, n in enumerate(names)}
    labels = np.empty(len(raw_labels), np.int32)
    for k, (lab, lineno) in enumerate(zip(raw_labels, lines)):
        if lab not in index:
            raise ValueError(f"{path}: line {lineno}: label {lab!r} is not one of {names}.")
        labels[k] = index[lab]
    return TSVDataset(texts, labels, names, lines)


def encode_texts(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    vocab: Vocabulary,
    *,
    add_bos: bool = False,
    add_eos: bool = False,
) -> tuple[list[np.ndarray], int]:
    """Tokenise and encode each text.

    Returns:
      (list of (T_i,) int32 id arrays, total number of OOV tokens). Pad them with
      ``rnnjax.data.batching.pad_sequences``.
    """
    out, total = [], 0
    for t in texts:
        ids, n = vocab.encode(tokenizer(t), add_bos=add_bos, add_eos=add_eos, return_oov=True)
        out.append(ids)
        total += n
    return out, total
