"""Vocabulary, tokenisers and text loaders."""

import collections
import json

import numpy as np
import pytest

from rnnjax.data import text as tx


def test_specials_have_fixed_ids():
    assert tx.SPECIALS == ("<pad>", "<unk>", "<bos>", "<eos>")
    assert (tx.PAD_ID, tx.UNK_ID, tx.BOS_ID, tx.EOS_ID) == (0, 1, 2, 3)
    v = tx.Vocabulary.build(["a"])
    assert [v.token_to_id(s) for s in tx.SPECIALS] == [0, 1, 2, 3]


def test_build_order_min_freq_and_max_size():
    stream = "c b a b c c d e e".split() + ["<unk>"]
    v = tx.Vocabulary.build(stream)
    # Counts: c3, b2, e2, a1, d1; ties sorted by the token; literal specials are not re-added.
    assert v.tokens == (*tx.SPECIALS, "c", "b", "e", "a", "d")
    assert len(v) == 9
    assert tx.Vocabulary.build(reversed(stream)).tokens == v.tokens
    v2 = tx.Vocabulary.build(stream, min_freq=2)
    assert v2.tokens[4:] == ("c", "b", "e")
    v3 = tx.Vocabulary.build(stream, max_size=6)
    assert v3.tokens[4:] == ("c", "b") and len(v3) == 6
    with pytest.raises(ValueError, match="max_size"):
        tx.Vocabulary.build(stream, max_size=3)
    with pytest.raises(ValueError, match="min_freq"):
        tx.Vocabulary.build(stream, min_freq=0)


def test_encode_counts_oov_and_decode():
    v = tx.Vocabulary.build("the cat sat on the mat".split())
    toks = "the dog sat on the log".split()
    ids, n_oov = v.encode(toks, return_oov=True)
    assert ids.dtype == np.int32 and ids.shape == (6,)
    expected = [v.tokens.index(t) if t in v.tokens else tx.UNK_ID for t in toks]
    assert ids.tolist() == expected
    assert n_oov == 2
    assert v.decode(ids) == ["the", "<unk>", "sat", "on", "the", "<unk>"]
    ids2 = v.encode(["cat"], add_bos=True, add_eos=True)
    assert ids2.tolist() == [tx.BOS_ID, v.token_to_id("cat"), tx.EOS_ID]
    assert v.decode(ids2, skip_specials=True) == ["cat"]
    # The running totals cover both calls; added specials are not counted as tokens.
    assert (v.num_encoded, v.num_oov) == (7, 2)
    assert v.oov_rate == pytest.approx(2 / 7)
    v.reset_oov_stats()
    assert v.oov_rate == 0.0
    assert v.encode([]).shape == (0,)
    with pytest.raises(ValueError, match="outside"):
        v.decode([len(v)])


def test_constructor_validation():
    with pytest.raises(ValueError, match="specials"):
        tx.Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        tx.Vocabulary([*tx.SPECIALS, "a", "a"])


def test_save_load_roundtrip(tmp_path):
    v = tx.Vocabulary.build("é ü a b b".split(), meta={"tokenizer": {"level": "word"}})
    p = tmp_path / "vocab.json"
    v.save(p)
    d = json.loads(p.read_text(encoding="utf-8"))
    assert d["tokens"][:4] == list(tx.SPECIALS) and d["format"] == "rnnjax.vocabulary"
    w = tx.Vocabulary.load(p)
    assert w == v and w.tokens == v.tokens
    assert w.meta == {"min_freq": 1, "max_size": None, "tokenizer": {"level": "word"}}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        tx.Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"tokens": []}')
    with pytest.raises(ValueError, match="other.json.*not an rnnjax vocabulary"):
        tx.Vocabulary.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tx.Vocabulary.load(tmp_path / "missing.json")


def test_tokenizers():
    s = "Hello, World! It's 3pm.\n"
    assert tx.char_tokenize(s) == list(s)
    assert "".join(tx.char_tokenize(s)) == s
    assert tx.word_tokenize(s) == ["Hello", ",", "World", "!", "It", "'", "s", "3pm", "."]
    assert tx.word_tokenize(s, lowercase=True)[0] == "hello"
    t = tx.Tokenizer("char", lowercase=True)
    assert t("AbC") == ["a", "b", "c"] and t.detokenize(t("abc")) == "abc"
    assert tx.Tokenizer.from_dict(t.to_dict()) == t
    assert tx.Tokenizer("word").detokenize(["a", "b"]) == "a b"
    with pytest.raises(ValueError, match="level"):
        tx.Tokenizer("bpe")


def test_read_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        tx.read_text(tmp_path / "nope.txt")
    p = tmp_path / "latin.txt"
    p.write_bytes("ok line\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt: line 2 .*not valid utf-8"):
        tx.read_text(p)
    e = tmp_path / "empty.txt"
    e.write_text("")
    with pytest.raises(ValueError, match="empty.txt: file is empty"):
        tx.read_text(e)
    with pytest.raises(ValueError, match="not a regular file"):
        tx.read_text(tmp_path)


def test_lm_corpus_char_split(tmp_path):
    text = "to be or not to be, that is the question.\nwhether 'tis nobler: zqx\n"
    p = tmp_path / "corpus.txt"
    p.write_text(text, encoding="utf-8")
    c = tx.load_lm_corpus(p, val_fraction=0.2)
    n_val = round(len(text) * 0.2)
    assert c.train.dtype == c.val.dtype == np.int32
    assert len(c.train) == len(text) - n_val and len(c.val) == n_val
    train_text, val_text = text[: len(text) - n_val], text[len(text) - n_val :]
    # The vocabulary comes from the train part only; unseen val characters are OOV.
    assert set(c.vocab.tokens[4:]) == set(train_text)
    unseen = [ch for ch in val_text if ch not in set(train_text)]
    assert c.val_oov == len(unseen) and c.train_oov == 0
    decoded = "".join(c.vocab.decode(c.val))
    assert decoded == "".join("<unk>" if ch in unseen else ch for ch in val_text)
    assert "".join(c.vocab.decode(c.train)) == train_text
    again = tx.load_lm_corpus(p, val_fraction=0.2)
    assert np.array_equal(again.train, c.train) and again.vocab == c.vocab
    # An existing vocabulary is used as is.
    w = tx.load_lm_corpus(p, vocab=c.vocab, val_fraction=0.0)
    assert len(w.val) == 0 and w.vocab is c.vocab
    with pytest.raises(ValueError, match="val_fraction"):
        tx.load_lm_corpus(p, val_fraction=1.0)


def test_lm_corpus_word_level(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("The cat. the CAT, the dog!", encoding="utf-8")
    c = tx.load_lm_corpus(p, tokenizer=tx.Tokenizer("word", lowercase=True), val_fraction=0.25)
    toks = ["the", "cat", ".", "the", "cat", ",", "the", "dog", "!"]
    assert c.vocab.decode(np.concatenate([c.train, c.val])) == [
        t if t in toks[:7] else "<unk>" for t in toks
    ]
    assert c.val_oov == 2  # "dog" and "!" only occur in the val part
    assert c.vocab.meta["tokenizer"] == {"level": "word", "lowercase": True}


SMS = (
    "ham\tGo until jurong point, crazy.. Available only in bugis n great world la e buffet...\n"
    "ham\tOk lar... Joking wif u oni...\n"
    "spam\tFree entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005.\r\n"
    "\n"
    "ham\tU dun say so early hor...\tU c already then say...\n"
)


def test_tsv_sms_format(tmp_path):
    p = tmp_path / "SMSSpamCollection"
    p.write_text(SMS, encoding="utf-8")
    d = tx.load_tsv_classification(p)
    assert d.label_names == ["ham", "spam"]
    assert d.labels.dtype == np.int32 and d.labels.tolist() == [0, 0, 1, 0]
    assert len(d) == 4 and d.line_numbers == [1, 2, 3, 5]
    assert d.texts[2] == "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005."
    assert d.texts[3] == "U dun say so early hor...\tU c already then say..."  # split at first tab
    counts = collections.Counter(line.split("\t")[0] for line in SMS.splitlines() if line)
    assert np.bincount(d.labels).tolist() == [counts["ham"], counts["spam"]]
    fixed = tx.load_tsv_classification(p, label_names=["spam", "ham"])
    assert fixed.labels.tolist() == [1, 1, 0, 1]
    with pytest.raises(ValueError, match="line 3: label 'spam' is not one of"):
        tx.load_tsv_classification(p, label_names=["ham"])


def test_tsv_errors(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("ham\tfine\nspam no tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv: line 2 has no tab"):
        tx.load_tsv_classification(p)
    p.write_text("ham\tfine\n\tno label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has an empty label"):
        tx.load_tsv_classification(p)
    p.write_bytes(b"ham\tok\nspam\t\xff\xfe\n")
    with pytest.raises(ValueError, match="bad.tsv: line 2"):
        tx.load_tsv_classification(p)
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        tx.load_tsv_classification(p)
    with pytest.raises(FileNotFoundError, match="absent.tsv"):
        tx.load_tsv_classification(tmp_path / "absent.tsv")


def test_encode_texts():
    tok = tx.Tokenizer("word", lowercase=True)
    v = tx.Vocabulary.build(tok("a b c a"))
    seqs, n_oov = tx.encode_texts(["A b", "c zz z"], tok, v, add_eos=True)
    assert [s.tolist() for s in seqs] == [
        [v.token_to_id("a"), v.token_to_id("b"), tx.EOS_ID],
        [v.token_to_id("c"), tx.UNK_ID, tx.UNK_ID, tx.EOS_ID],
    ]
    assert n_oov == 2
