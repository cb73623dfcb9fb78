"""CSV series reading, chronological splits, train-only scaling and windowing."""

import numpy as np
import pytest

from rnnjax.data import series as sr

CSV = "date,temp,rain\n2020-01-01,1.5,0\n2020-01-02,-2,3\n\n2020-01-03,4e-1,1\n2020-01-04, 7 ,2\n"


def test_read_column_by_name_and_index(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text(CSV)
    by_name = sr.read_csv_column(p, "temp")
    assert by_name.dtype == np.float64
    np.testing.assert_array_equal(by_name, [1.5, -2.0, 0.4, 7.0])
    np.testing.assert_array_equal(sr.read_csv_column(p, 2), [0, 3, 1, 2])
    q = tmp_path / "nohead.csv"
    q.write_text("1;2\n3;4\n")
    np.testing.assert_array_equal(sr.read_csv_column(q, 1, header=False, delimiter=";"), [2, 4])


def test_read_column_errors(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text(CSV)
    msg = r"column 'wind' not in the header.*\['date', 'temp', 'rain'\]"
    with pytest.raises(ValueError, match=msg):
        sr.read_csv_column(p, "wind")
    with pytest.raises(ValueError, match="column index 3 out of range"):
        sr.read_csv_column(p, 3)
    with pytest.raises(ValueError, match=r"w.csv: line 2, column 0 \('date'\): value '2020-01-01'"):
        sr.read_csv_column(p, 0)
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n1\n2\nn/a\n")
    msg = r"bad.csv: line 4, column 'x': value 'n/a' is not a number"
    with pytest.raises(ValueError, match=msg):
        sr.read_csv_column(bad, "x")
    bad.write_text("x\n1\nnan\n")
    with pytest.raises(ValueError, match="line 3.*not finite"):
        sr.read_csv_column(bad, "x")
    bad.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        sr.read_csv_column(bad, "b")
    bad.write_text("a\n")
    with pytest.raises(ValueError, match="no data rows"):
        sr.read_csv_column(bad, "a")
    with pytest.raises(FileNotFoundError, match="none.csv"):
        sr.read_csv_column(tmp_path / "none.csv", 0)


def test_split_sizes_and_order():
    x = np.arange(20.0)
    tr, va, te = sr.split_series(x, 0.6, 0.25)
    assert (len(tr), len(va), len(te)) == (12, 5, 3)
    np.testing.assert_array_equal(np.concatenate([tr, va, te]), x)
    tr, va, te = sr.split_series(x, 0.5, 0.0)
    assert len(va) == 0 and len(te) == 10
    with pytest.raises(ValueError, match="train_fraction"):
        sr.split_series(x, 0.8, 0.3)


def test_standardizer_uses_train_only():
    train, test = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0])
    s = sr.Standardizer.fit(train)
    assert s.mean == 2.5 and s.std == pytest.approx(np.sqrt(1.25))
    z = s.transform(train)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(s.transform(test), (test - 2.5) / np.sqrt(1.25))
    np.testing.assert_allclose(s.inverse_transform(s.transform(test)), test)
    assert s.transform(np.float32([1.0])).dtype == np.float32
    assert sr.Standardizer.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="constant"):
        sr.Standardizer.fit(np.ones(5))


def test_make_windows_values():
    x = np.arange(10.0)
    inp, tgt = sr.make_windows(x, window=3, horizon=2, stride=2)
    assert inp.shape == (3, 3, 1) and tgt.shape == (3, 2) and inp.dtype == np.float32
    np.testing.assert_array_equal(inp[:, :, 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(tgt, [[3, 4], [5, 6], [7, 8]])
    with pytest.raises(ValueError, match="shorter than window"):
        sr.make_windows(x, 9, 2)
    with pytest.raises(ValueError, match="horizon"):
        sr.make_windows(x, 3, 0)


@pytest.mark.parametrize("context", [True, False])
def test_windowed_splits(context):
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal(100)) + 50
    parts, scaler = sr.windowed_splits(
        x, window=5, horizon=2, train_fraction=0.6, val_fraction=0.2,
        context_from_previous=context,
    )
    assert scaler.mean == pytest.approx(x[:60].mean()) and scaler.std == pytest.approx(x[:60].std())
    offsets = {"train": 0, "val": 60, "test": 80}
    for name, lo in offsets.items():
        inp, tgt = parts[name]["inputs"], parts[name]["targets"]
        hi = lo + (60 if name == "train" else 20)
        start = lo - 5 if (context and name != "train") else lo
        n = (hi - start - 7) + 1
        assert inp.shape == (n, 5, 1) and tgt.shape == (n, 2)
        back_in = scaler.inverse_transform(inp[..., 0].astype(np.float64))
        back_tgt = scaler.inverse_transform(tgt.astype(np.float64))
        for i in range(n):
            np.testing.assert_allclose(back_in[i], x[start + i : start + i + 5], rtol=1e-5)
            np.testing.assert_allclose(back_tgt[i], x[start + i + 5 : start + i + 7], rtol=1e-5)
        # Every target lies inside its own part, and the part's last value is a target.
        assert start + 5 >= lo and start + (n - 1) + 6 == hi - 1
    raw, none = sr.windowed_splits(x, 5, normalize=False)
    assert none is None and raw["train"]["targets"][0, 0] == np.float32(x[5])


def test_windowed_splits_short_part_is_empty():
    parts, _ = sr.windowed_splits(np.arange(30.0), 5, 1, train_fraction=0.9, val_fraction=0.1,
                                  context_from_previous=False)
    assert parts["val"]["inputs"].shape == (0, 5, 1) and parts["test"]["targets"].shape == (0, 1)
