"""The package's layout rules, checked on its source: no import cycle, no private name imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"


def _modules(root: Path = RUNNER) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for file in root.rglob("*.py"):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _imported(name: str, file: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved against the module's package)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, file in modules.items():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = _imported(name, file, node)
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "runner"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from runner.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runner import a\n")
    (pkg / "d.py").write_text("from runner import a\n")
    assert cycles(import_graph(_modules(pkg))) == [["runner.a", "runner.c", "runner.sub.b"]]


def test_no_import_cycle_in_runner():
    found = cycles(import_graph(_modules()))
    # A cycle means a type or function sits in the wrong module: move it to the lower one (shared/STYLE.md).
    assert not found, "import cycles in runner/:\n" + "\n".join(" ".join(c) for c in found)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, file in _modules().items():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.ImportFrom):
                source = _imported(name, file, node)
                offenders += [f"{file.relative_to(RUNNER.parent)}:{node.lineno}: {a.name} from {source}"
                              for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, "make the name public in the module that owns it:\n" + "\n".join(offenders)
