"""rnnjax.data is numpy only: no jax/flax/torch, and no imports from higher rnnjax packages."""

import ast
import pathlib

import rnnjax.data

DATA_DIR = pathlib.Path(rnnjax.data.__file__).parent
FORBIDDEN = ("jax", "flax", "optax", "orbax", "torch", "tensorflow")
ALLOWED_RNNJAX = ("rnnjax.data",)


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            yield node.module


def test_no_forbidden_imports():
    files = sorted(DATA_DIR.glob("*.py"))
    assert {f.name for f in files} >= {
        "__init__.py", "synthetic.py", "text.py", "embeddings.py", "series.py", "batching.py",
        "download.py",
    }
    for f in files:
        for mod in _imports(f):
            top = mod.split(".")[0]
            assert top not in FORBIDDEN, f"{f.name} imports {mod}"
            if top == "rnnjax":
                assert mod.startswith(ALLOWED_RNNJAX), f"{f.name} imports {mod}"


def test_public_api_is_exported():
    for name in rnnjax.data.__all__:
        assert hasattr(rnnjax.data, name), name
    for fn in ("adding_problem", "copy_task", "Vocabulary", "load_glove", "BatchIterator", "fetch"):
        assert getattr(rnnjax.data, fn).__doc__, fn
