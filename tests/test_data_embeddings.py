"""GloVe loading aligned with a Vocabulary."""

import numpy as np
import pytest

from rnnjax.data.embeddings import load_glove
from rnnjax.data.text import PAD_ID, Vocabulary

VECS = {
    "the": [0.1, -0.2, 0.3],
    "cat": [1.0, 2.0, 3.5],
    "sat": [-1e-3, 0.0, 4.0],
    "zebra": [9.0, 9.0, 9.0],  # in the file, not in the vocabulary
    "mat": [0.5, 0.25, -0.125],
}


def _write(path, vecs, extra=""):
    lines = [f"{w} " + " ".join(repr(v) for v in vs) for w, vs in vecs.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_rows_match_file_and_missing_are_seeded(tmp_path):
    p = _write(tmp_path / "g.txt", VECS)
    vocab = Vocabulary.build(["the", "cat", "sat", "dog", "The", "Mat", "mat"])
    m, n_found, found = load_glove(p, vocab, init_scale=0.5, seed=3)
    assert m.shape == (len(vocab), 3) and m.dtype == np.float32
    for w in ("the", "cat", "sat", "mat"):
        np.testing.assert_array_equal(m[vocab.token_to_id(w)], np.float32(VECS[w]))
    # "The" and "Mat" fall back to their lowercase forms; "dog" is missing.
    np.testing.assert_array_equal(m[vocab.token_to_id("The")], np.float32(VECS["the"]))
    np.testing.assert_array_equal(m[vocab.token_to_id("Mat")], np.float32(VECS["mat"]))
    assert n_found == 6
    expected_found = [False] * 4 + [True] * len(vocab.tokens[4:])
    expected_found[vocab.token_to_id("dog")] = False
    assert found.tolist() == expected_found
    assert (m[PAD_ID] == 0).all()
    # Missing rows (dog, <unk>, <bos>, <eos>) are a fixed normal draw of the whole matrix.
    ref = (np.random.default_rng(3).standard_normal((len(vocab), 3)) * 0.5).astype(np.float32)
    for i in (1, 2, 3, vocab.token_to_id("dog")):
        np.testing.assert_array_equal(m[i], ref[i])
    again = load_glove(p, vocab, init_scale=0.5, seed=3)
    np.testing.assert_array_equal(again.matrix, m)
    other = load_glove(p, vocab, init_scale=0.5, seed=4).matrix
    assert not np.array_equal(other[vocab.token_to_id("dog")], m[vocab.token_to_id("dog")])
    np.testing.assert_array_equal(other[vocab.token_to_id("cat")], m[vocab.token_to_id("cat")])


def test_exact_match_beats_lowercase_and_first_duplicate_wins(tmp_path):
    vecs = {"apple": [1.0, 1.0], "Apple": [2.0, 2.0]}
    p = _write(tmp_path / "g.txt", vecs, extra="Apple 3.0 3.0\n")
    vocab = Vocabulary.build(["Apple"])
    m, n, _ = load_glove(p, vocab)
    np.testing.assert_array_equal(m[4], [2.0, 2.0])
    assert n == 1
    h = _write(tmp_path / "h.txt", {"apple": [1.0, 1.0]})
    assert load_glove(h, vocab).num_found == 1
    assert load_glove(h, vocab, match_lowercase=False).num_found == 0


def test_inconsistent_dimension_names_line(tmp_path):
    p = _write(tmp_path / "g.txt", VECS, extra="short 1.0 2.0\n")
    with pytest.raises(ValueError, match=r"g.txt: line 6 has 2 values after the word, expected 3"):
        load_glove(p, Vocabulary.build(["cat"]))


def test_non_numeric_value_names_line(tmp_path):
    p = _write(tmp_path / "g.txt", {"cat": [1.0, 2.0]}, extra="dog 1.0 oops\n")
    with pytest.raises(ValueError, match=r"line 2 \(word 'dog'\) has a non-numeric value"):
        load_glove(p, Vocabulary.build(["dog"]))
    # Lines of words outside the vocabulary are only checked for their field count.
    m, n, _ = load_glove(p, Vocabulary.build(["cat"]))
    assert n == 1


def test_explicit_dim_allows_spaces_in_words(tmp_path):
    p = tmp_path / "g840.txt"
    p.write_text("new york 1 2\ncat 3 4\n. . 5 6\n", encoding="utf-8")
    vocab = Vocabulary(["<pad>", "<unk>", "<bos>", "<eos>", "new york", "cat", ". ."])
    m, n, _ = load_glove(p, vocab, dim=2)
    np.testing.assert_array_equal(m[4:], [[1, 2], [3, 4], [5, 6]])
    assert n == 3
    # Without dim, the first line implies E = 3 and line 2 contradicts it.
    msg = r"line 2 has 2 values after the word, expected 3 \(from line 1\)"
    with pytest.raises(ValueError, match=msg):
        load_glove(p, vocab)


def test_empty_and_missing_files(tmp_path):
    e = tmp_path / "empty.txt"
    e.write_text("")
    with pytest.raises(ValueError, match="empty.txt: file is empty"):
        load_glove(e, Vocabulary.build(["a"]))
    with pytest.raises(FileNotFoundError, match="gone.txt"):
        load_glove(tmp_path / "gone.txt", Vocabulary.build(["a"]))
