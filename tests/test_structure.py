"""The package's structure rules, read from the source with `ast` (nothing is imported):

* no module uses another module's private (_underscore) names: neither `from m import _x` nor `m._x`;
* the modules of brats2d (cli/ is brats2d.cli) import each other without a cycle, counting imports
  inside functions too (a lazy import hides a cycle from Python, not from the reader).

The research and benchmark scripts are held to the first rule as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"brats2d": ROOT / "brats2d", "brats2d.cli": ROOT / "cli"}
SCRIPTS = ("benchmarks", "experiments")


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (cli/ mapped to brats2d.cli)."""
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((pkg, *rel))] = f
    return out


MODULES = _modules()


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom in `module` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> tuple[set[str], list[str]]:
    """(package modules `module` imports anywhere in its body, private names it takes from other modules)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    deps: set[str] = set()
    bad: list[str] = []
    aliases: dict[str, str] = {}  # local name -> package module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES or a.name.split(".")[0] == "brats2d":
                    deps.add(a.name)
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if any(_is_private(p) for p in a.name.split(".")):
                    bad.append(f"{_where(path)}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, is_pkg, node)
            if not (src in MODULES or src.split(".")[0] == "brats2d"):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in MODULES:  # `from . import checkpoint`: a module
                    deps.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    deps.add(src)
                    if _is_private(a.name):
                        bad.append(f"{_where(path)}:{node.lineno}: from {src} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in aliases:
                target = ".".join([aliases[v.id], *reversed(chain[1:])])
                if target in MODULES and target != module:
                    bad.append(f"{_where(path)}:{node.lineno}: {target}.{node.attr}")
    return {d for d in deps if d in MODULES and d != module}, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_private_names_cross_modules() -> None:
    bad: list[str] = []
    for module, path in MODULES.items():
        bad += _imports(module, path)[1]
    for folder in SCRIPTS:
        for path in sorted((ROOT / folder).glob("*.py")):
            bad += _imports(f"{folder}.{path.stem}", path)[1]
    assert not bad, "private names used across modules:\n  " + "\n  ".join(bad)


def test_no_import_cycles() -> None:
    # An import of a.b also runs a/__init__.py; that edge is left out (the package's own
    # __init__ files import nothing of the package), the module itself counts.
    graph = {m: {d for d in _imports(m, p)[0] if d not in _parents(m)} for m, p in MODULES.items()}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The checks catch what they are for: a private import, a private attribute, a cycle."""
    f = tmp_path / "m.py"
    f.write_text("from brats2d.checkpoint import _Writer\nfrom brats2d import cache\ncache._h5()\n")
    assert len(_imports("brats2d.m", f)[1]) == 2
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
