"""The import layering written in the README holds for every module of the package.

Each row of the README's "never imports" table is read, and every ``import`` in the
package, at any depth (an import inside a function dodges a cycle at run time but
is still a layering error), is checked against it. The package graph between the
top-level components must also be free of cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "rnnjax"


def _rules() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(rnnjax[\w.]*)` \| (`rnnjax.*)\|\s*$", text, flags=re.M)
    assert rows, "the README lost its 'never imports' table"
    return {mod: re.findall(r"`(rnnjax[\w.]*)`", rest) for mod, rest in rows}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``[(line, imported module)]`` for every rnnjax import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("rnnjax")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("rnnjax"):
                out.append((node.lineno, mod))
                # `from rnnjax import decoding` imports the submodule rnnjax.decoding.
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def _violations(rules: dict[str, list[str]], files: list[Path]) -> list[str]:
    bad: dict[tuple, str] = {}
    for path in files:
        me = _module_name(path)
        owners = [m for m in rules if _within(me, m)]
        for line, mod in _imports(path):
            for owner in owners:
                for banned in rules[owner]:
                    key = (path, line, banned)
                    if _within(mod, banned) and not _within(me, banned) and key not in bad:
                        bad[key] = (f"{path.relative_to(ROOT)}:{line} imports {mod} "
                                    f"({owner} never imports {banned})")
    return list(bad.values())


def test_every_import_respects_the_readme_table():
    files = sorted(PKG.rglob("*.py"))
    bad = _violations(_rules(), files)
    assert not bad, "\n".join(bad)


def test_the_table_names_real_modules():
    for mod, banned in _rules().items():
        for name in [mod, *banned]:
            path = ROOT / Path(*name.split("."))
            assert path.is_dir() or path.with_suffix(".py").exists(), name


def test_the_checker_catches_a_cycle_hidden_in_a_function(tmp_path):
    """The check sees what the old code did: diagnostics importing the trainer inside a
    function while the trainer imports diagnostics."""
    pkg = tmp_path / "rnnjax"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "trainer.py").write_text(
        "def loop():\n    from rnnjax.diagnostics import training_diagnostics\n")
    (pkg / "diagnostics.py").write_text(
        "def load():\n    from rnnjax.train.trainer import load_for_inference\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        bad = _violations({"rnnjax.train": ["rnnjax.diagnostics"],
                           "rnnjax.diagnostics": ["rnnjax.train.trainer"]},
                          sorted(pkg.rglob("*.py")))
    finally:
        ROOT = old
    assert len(bad) == 2, bad
    assert any("trainer.py:2 imports rnnjax.diagnostics" in b for b in bad)


@pytest.mark.parametrize("component", ["nn", "data", "models", "tasks", "train", "sweeps"])
def test_no_cycles_between_components(component):
    """A component's own modules import nothing that imports the component back."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        me = _module_name(path)
        top = ".".join(me.split(".")[:2])
        graph.setdefault(top, set()).update(
            ".".join(m.split(".")[:2]) for _, m in _imports(path))
    start = f"rnnjax.{component}"
    seen, stack = set(), [m for m in graph.get(start, ()) if m != start]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack += [n for n in graph.get(m, ()) if n != m]
    assert start not in seen, f"{start} imports something that imports {start} back"
