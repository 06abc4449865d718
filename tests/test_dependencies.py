"""The dependency rule of CONTRIBUTING.md, read from the import statements (nothing is imported).

* No import cycle among the package's modules. Every import statement counts, at module level or
  inside a function (a lazy import is still a dependency); only ``if TYPE_CHECKING:`` blocks do
  not. A package's ``__init__`` is a module of its own (importing ``a.b`` is not counted as
  importing ``a``).
* ``benchmarks/`` uses the export toolchain and the training code only through their public entry
  points: ``smirk_edge.export`` and ``smirk_edge.training`` themselves and the names in their
  ``__all__``, never one of their modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATED = ("smirk_edge.export", "smirk_edge.training")


def _package_dirs() -> dict[str, Path]:
    """Import name -> folder, from ``[tool.setuptools.package-dir]`` in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {name: ROOT / folder for name, folder in re.findall(r'^"([\w.]+)"\s*=\s*"([\w./-]+)"', section, re.M)}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, folder in _package_dirs().items():
        for f in folder.rglob("*.py"):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if f.parent == folder or (f.parent / "__init__.py").is_file():
                mods.setdefault(name, f)
    return mods


def _statements(tree: ast.AST):
    """Import statements, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for each import of a package module."""
    out = []
    is_pkg = path.name == "__init__.py"
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target:
                    out.append((target, None, node.lineno))
            continue
        if node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in mods:
                out.append((sub, None, node.lineno))
                continue
            target = source
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target:
                out.append((target, alias.name if target == source else None, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {t for t, _, _ in _imports(name, path, mods) if t != name} for name, path in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle():
    edges = _graph()
    cycles = _cycles(edges)
    lines = [f"{' <-> '.join(c)}: " + "; ".join(f"{a} imports {sorted(edges[a] & set(c))}" for a in c)
             for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_the_checks_see_imports_and_cycles():
    edges = _graph()
    assert len(edges) > 100
    assert "smirk_edge.pipeline" in edges["smirk_edge.reconstructor"]  # module level
    assert "smirk_edge.runtimes.registry" in edges["smirk_edge.export.pipeline"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _public_names(package: str, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(mods[package].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def test_benchmarks_use_only_the_public_export_and_training_entry_points():
    mods = _modules()
    public = {pkg: _public_names(pkg, mods) for pkg in GATED}
    bad = []
    checked = 0
    for name, path in sorted(mods.items()):
        rel = path.relative_to(ROOT).as_posix()
        if not name.startswith("smirk_edge.benchmarks"):
            continue
        checked += 1
        for target, taken, line in _imports(name, path, mods):
            gated = next((g for g in GATED if target == g or target.startswith(g + ".")), None)
            if gated is None:
                continue
            if target != gated:
                bad.append(f"{rel}:{line}: imports {target} (internal; use {gated}'s public names)")
            elif taken is not None and taken not in public[gated]:
                bad.append(f"{rel}:{line}: {taken} is not in {gated}.__all__")
    assert checked > 10
    assert not bad, "\n".join(bad)
