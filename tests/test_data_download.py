"""Dataset cache: file:// downloads, checksums, cache hits without network, offline message.

No test here may touch the real network: an autouse fixture makes every socket connection fail.
"""

import hashlib
import socket
import urllib.request
import zipfile

import pytest

from rnnjax.data import download as dl


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # no DNS lookups either


@pytest.fixture
def source(tmp_path):
    """A 'remote' file the test writes itself, served through a file:// URL."""
    src = tmp_path / "remote" / "data.txt"
    src.parent.mkdir()
    payload = "line one\nline two\n" * 100
    src.write_text(payload)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return src, payload, digest


def _spec(src, sha=None, **kw):
    return dl.DatasetSpec(name="toy", url=src.as_uri(), filename="data.txt", sha256=sha, **kw)


def test_registry_entries():
    reg = dl.REGISTRY
    assert reg["glove.6B"].url == "https://nlp.stanford.edu/data/glove.6B.zip"
    assert reg["glove.6B"].filename == "glove.6B.zip" and reg["glove.6B"].extract
    assert reg["sms_spam"].url == (
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
    )
    assert reg["sms_spam"].primary == "SMSSpamCollection"
    assert reg["tiny_shakespeare"].url == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    )
    # tiny_shakespeare is pinned to the digest of karpathy/char-rnn's file (checked against a
    # copy fetched independently); GloVe and the UCI zip have no published checksum.
    assert reg["tiny_shakespeare"].sha256 == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
    assert reg["glove.6B"].sha256 is None and reg["sms_spam"].sha256 is None
    with pytest.raises(ValueError, match="already registered"):
        dl.register(reg["glove.6B"])
    with pytest.raises(ValueError, match="64 hex"):
        dl.register(dl.DatasetSpec("x", "file:///x", "x", sha256="abc"))
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; known: \['glove.6B'"):
        dl.fetch("nope")


def test_download_from_file_url_with_pinned_checksum(tmp_path, source):
    src, payload, digest = source
    cache = tmp_path / "cache"
    path = dl.fetch(_spec(src, digest), cache_dir=cache)
    assert path == cache / "toy" / "data.txt"
    assert path.read_text() == payload
    assert dl.sha256_file(path) == digest
    assert not (cache / "toy" / "data.txt.part").exists()


def test_checksum_mismatch_raises_and_keeps_nothing(tmp_path, source):
    src, _, digest = source
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(dl.ChecksumError, match=f"sha256 is {digest}, expected {wrong}"):
        dl.fetch(_spec(src, wrong), cache_dir=cache)
    assert list((cache / "toy").iterdir()) == []


def test_cached_file_with_wrong_checksum_raises(tmp_path, source):
    src, _, _ = source
    folder = tmp_path / "cache" / "toy"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("something else")
    with pytest.raises(dl.ChecksumError, match="data.txt: sha256 is .*delete it"):
        dl.fetch(_spec(src, "1" * 64), cache_dir=tmp_path / "cache")


def test_cached_file_is_used_without_network(tmp_path, source, monkeypatch):
    src, payload, digest = source
    cache = tmp_path / "cache"
    first = dl.fetch(_spec(src, digest), cache_dir=cache)

    def no_urlopen(*a, **k):
        raise AssertionError("fetch() must not open a URL when the file is cached")

    monkeypatch.setattr(urllib.request, "urlopen", no_urlopen)
    src.unlink()  # the "remote" is gone too
    assert dl.fetch(_spec(src, digest), cache_dir=cache) == first
    # The verified stamp avoids re-hashing an unchanged file...
    monkeypatch.setattr(dl, "sha256_file", lambda p: (_ for _ in ()).throw(AssertionError))
    assert dl.fetch(_spec(src, digest), cache_dir=cache).read_text() == payload
    # ...but a modified file is hashed again and rejected.
    first.write_text("tampered")
    monkeypatch.undo()
    monkeypatch.setattr(urllib.request, "urlopen", no_urlopen)
    with pytest.raises(dl.ChecksumError):
        dl.fetch(_spec(src, digest), cache_dir=cache)


def test_offline_message_names_url_and_path(tmp_path):
    missing = tmp_path / "not-there.bin"
    spec = dl.DatasetSpec("toy", missing.as_uri(), "blob.bin")
    cache = tmp_path / "cache"
    with pytest.raises(dl.DownloadError) as e:
        dl.fetch(spec, cache_dir=cache)
    msg = str(e.value)
    assert spec.url in msg
    assert str(cache / "toy" / "blob.bin") in msg
    assert not (cache / "toy" / "blob.bin.part").exists()
    with pytest.raises(dl.DownloadError, match="offline mode"):
        dl.fetch(spec, cache_dir=cache, offline=True)


def test_http_url_fails_cleanly_without_network(tmp_path):
    spec = dl.DatasetSpec("toy", "http://example.invalid/x.txt", "x.txt")
    with pytest.raises(dl.DownloadError, match=r"Put the file by hand at exactly"):
        dl.fetch(spec, cache_dir=tmp_path, timeout=1.0)


def test_env_cache_dir_and_offline_env(tmp_path, monkeypatch, source):
    src, payload, _ = source
    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "envcache"))
    assert dl.default_cache_dir() == tmp_path / "envcache"
    assert dl.dataset_dir("toy") == tmp_path / "envcache" / "toy"
    monkeypatch.setenv("RNNJAX_OFFLINE", "1")
    with pytest.raises(dl.DownloadError, match="envcache"):
        dl.fetch(_spec(src))
    monkeypatch.delenv("RNNJAX_OFFLINE")
    assert dl.fetch(_spec(src)).read_text() == payload
    monkeypatch.delenv("RNNJAX_CACHE")
    assert dl.default_cache_dir() == dl.Path.home() / ".cache" / "rnnjax"


def test_zip_is_extracted_once_and_primary_returned(tmp_path, monkeypatch):
    z = tmp_path / "remote.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("SMSSpamCollection", "ham\thi\nspam\twin\n")
        zf.writestr("readme", "about")
    digest = hashlib.sha256(z.read_bytes()).hexdigest()
    spec = dl.DatasetSpec("sms", z.as_uri(), "sms.zip", digest, extract=True,
                          primary="SMSSpamCollection")
    path = dl.fetch(spec, cache_dir=tmp_path / "c")
    assert path == tmp_path / "c" / "sms" / "SMSSpamCollection"
    assert path.read_text() == "ham\thi\nspam\twin\n"
    assert (path.parent / "readme").read_text() == "about"
    folder_spec = dl.DatasetSpec("sms", z.as_uri(), "sms.zip", digest, extract=True)
    assert dl.fetch(folder_spec, cache_dir=tmp_path / "c") == tmp_path / "c" / "sms"
    monkeypatch.setattr(dl.zipfile, "ZipFile", None)  # a second extraction would crash
    assert dl.fetch(spec, cache_dir=tmp_path / "c") == path


def test_bad_archives(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="not a valid zip"):
        dl.fetch(dl.DatasetSpec("b", bad.as_uri(), "b.zip", extract=True), cache_dir=tmp_path / "c")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="escapes"):
        spec = dl.DatasetSpec("e", evil.as_uri(), "e.zip", extract=True)
        dl.fetch(spec, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "escape.txt").exists()


def test_size_mismatch_only_warns(tmp_path, source):
    src, payload, _ = source
    with pytest.warns(UserWarning, match="expected about 5"):
        path = dl.fetch(_spec(src, size_bytes=5), cache_dir=tmp_path / "c")
    assert path.read_text() == payload
