"""Loading ml-collections configs, variant arguments and command-line overrides.

A config is a Python file ``configs/<name>.py`` with ``get_config(arg=None)``
returning a :class:`ml_collections.ConfigDict`. It is launched as
``--config configs/x.py:cell=gru,smoke --config.optim.lr=3e-4``.

* :func:`parse_arg` turns the ``arg`` string into a typed dict (big_vision style);
* :func:`load_config` imports a config file and calls ``get_config``;
* :func:`apply_overrides` applies ``a.b=value`` overrides to a locked config:
  an unknown key or a value of the wrong type is a ``ValueError`` naming the key
  and the closest known keys.

This is the only configuration system in rnnjax; nothing copies config values
into flags or globals.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_arg(arg: str | None, *, lazy: bool = False, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"cell=gru,T=200,smoke"`` against typed ``defaults``.

    A bare word ``smoke`` means ``smoke=True``. Each value is converted to the
    type of its default; an unknown name is an error listing the known ones.
    """
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=3)
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}"
                             + (f"; did you mean {close}?" if close else ""))
        default = defaults[key]
        if not eq:
            value = True if isinstance(default, bool) or default is None else None
            if value is None:
                raise ValueError(f"config argument {key!r} needs a value, e.g. {key}={default}")
        elif isinstance(default, bool):
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"config argument {key!r} must be true or false, got {value!r}")
            value = low in ("true", "1", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            parsed = _literal(value)
            ok = isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and (
                isinstance(default, float) or float(parsed).is_integer())
            if not ok:
                raise ValueError(f"config argument {key!r} must be a {type(default).__name__}, "
                                 f"got {value!r}")
            value = type(default)(parsed)
        elif isinstance(default, str):
            value = str(value)
        else:
            value = _literal(value)
        out[key] = value
    return ml_collections.ConfigDict(out)


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: inside the installed package (a wheel) or beside it
    (a source checkout, an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "adding.py").is_file():
            return candidate
    raise FileNotFoundError(f"rnnjax's configs folder is missing from {here} and {here.parent}; "
                            f"reinstall rnnjax")


def resolve_config_path(path: Path) -> Path:
    """``configs/x.py`` names a shipped config when no such file is here (any install)."""
    if path.is_file() or path.is_absolute() or not path.parts or path.parts[0] != "configs":
        return path
    shipped = configs_dir().joinpath(*path.parts[1:])
    return shipped if shipped.is_file() else path


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``"configs/x.py:arg"`` -> ``(Path("configs/x.py"), "arg")``."""
    path, sep, arg = str(spec).partition(":")
    return Path(path), (arg if sep else None)


def import_file(path: Path, kind: str):
    """Imports a config or study file by path, as a uniquely named module."""
    name = f"_rnnjax_{kind}_{path.stem}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
    except SyntaxError as e:
        # One line, the file's own, instead of a traceback through importlib.
        raise ValueError(f"{kind} file {path}, line {e.lineno}: {e.msg}"
                         + (f": {e.text.strip()}" if e.text else "")) from None
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Mapping[str, Any] | Iterable[str] = (),
                lock: bool = True) -> ml_collections.ConfigDict:
    """Imports ``path[:arg]``, calls ``get_config(arg)``, applies overrides, locks it."""
    path, arg = split_spec(spec)
    path = resolve_config_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found (from --config {spec!r}); "
                                f"configs live in configs/*.py")
    module = import_file(path, "config")
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config(arg=None)")
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config must return an ml_collections.ConfigDict")
    if lock:
        config.lock()
    apply_overrides(config, overrides)
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flat_keys(v, full + "."))
    return keys


#: Config dicts whose name ends with this hold keyword arguments (``model.cell_kwargs``):
#: overrides may add keys to them, which the locked config refuses everywhere else.
OPEN_SUFFIX = "_kwargs"


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any] | Iterable[str]) -> ml_collections.ConfigDict:
    """Sets dotted keys in place. Strings are parsed as Python literals when possible.

    Raises ValueError for an unknown key (with close matches) or a value whose type
    does not fit the existing field. Inside a ``*_kwargs`` dict any key may be added.
    """
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            key, eq, value = str(item).partition("=")
            if not eq:
                raise ValueError(f"override {item!r} must look like key=value, e.g. optim.lr=3e-4")
            pairs[key.strip()] = value
        overrides = pairs
    known = flat_keys(config)
    for key, raw in overrides.items():
        value = _literal(raw) if isinstance(raw, str) else raw
        *parents, leaf = key.split(".")
        node = config
        try:
            for p in parents:
                node = node[p]
            if not isinstance(node, ml_collections.ConfigDict):
                raise KeyError(key)
            if leaf not in node:
                if parents and parents[-1].endswith(OPEN_SUFFIX):
                    # Keyword arguments for a constructor (model.cell_kwargs): any key may
                    # be added; the constructor names the ones it does not take.
                    with node.unlocked():
                        node[leaf] = value
                    continue
                raise KeyError(key)
        except (KeyError, TypeError):
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            raise ValueError(f"unknown config key {key!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + " (the config is locked: only existing keys can be overridden)"
                             ) from None
        old = node[leaf]
        if isinstance(old, str) and isinstance(raw, str):
            # A string field takes the text as written ("none", "3"), unquoted.
            value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" \
                else raw
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"config key {key!r} holds a {type(old).__name__} ({old!r}); "
                             f"cannot set it to {value!r}: {e}") from None
    return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()
