"""The import graph of napari_edgesam: no cycles, and layers that import one way only.

Every ``import`` / ``from ... import`` statement of every module under
``src/napari_edgesam`` is read with :mod:`ast`, at module level and inside functions,
methods and ``try`` blocks alike (a function-level import still makes a cycle; it only hides
it until the function runs). Imports under ``if TYPE_CHECKING:`` are left out: they never
run. ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module of
the package, else of ``pkg`` itself (its ``__init__``).

Layers (see README): ``engine`` (numpy + onnxruntime) <- ``workflows`` <- ``widget`` and
``cli``. The engine imports nothing from the three others, workflows nothing from the
adapters.

Run as a script to print the graph's cycles: ``python tests/test_import_graph.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "napari_edgesam"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE

#: Cycles known when this test was written, outside the module being refactored; each is
#: the set of modules of one strongly connected component. Remove an entry once its
#: cycle is gone (the test fails on an entry that no longer matches a cycle, so the list
#: cannot go stale).
KNOWN_CYCLES: list[frozenset[str]] = []


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: set[str]) -> dict[str, int]:
    """The package's modules that module ``name`` imports: ``{target: line}``."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            found.setdefault(target, line)

    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
            continue
        if node.level:
            base = here.split(".")
            base = base[:len(base) - (node.level - 1)]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            add(sub if sub in modules else base, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first import}}`` over the whole package."""
    files = module_files()
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.add(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def describe(component: frozenset[str], graph: dict[str, dict[str, int]]) -> str:
    """The edges inside one cycle, ``a -> b (line n)`` each."""
    files = module_files()
    lines = []
    for a in sorted(component):
        for b, line in sorted(graph[a].items()):
            if b in component:
                lines.append(f"  {a} -> {b}  ({files[a].relative_to(ROOT.parent)}:{line})")
    return "\n".join(lines)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # engine.models imports engine.download inside a function only
    assert f"{PACKAGE}.engine.download" in graph[f"{PACKAGE}.engine.models"]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    unknown = [c for c in found if c not in KNOWN_CYCLES]
    report = "\n".join(describe(c, graph) for c in unknown)
    assert not unknown, f"import cycles (function-level imports included):\n{report}"
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"KNOWN_CYCLES entries that are no longer cycles, remove them: {gone}"


def test_layers_import_one_way():
    forbidden = {
        "engine": {"workflows", "widget", "cli"},
        "workflows": {"widget", "cli"},
    }
    bad = []
    for module, targets in import_graph().items():
        for target, line in targets.items():
            if _layer(target) in forbidden.get(_layer(module), ()):
                bad.append(f"{module} -> {target} (line {line})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


if __name__ == "__main__":  # pragma: no cover
    g = import_graph()
    for comp in cycles(g):
        print(f"cycle of {len(comp)} modules:\n{describe(comp, g)}")


def test_no_module_is_over_600_lines():
    """One concept per module: none grows into several (the README's layout table)."""
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in module_files().items()}
    assert len(sizes) > 60
    too_long = {name: n for name, n in sizes.items() if n > 600}
    assert not too_long, too_long
