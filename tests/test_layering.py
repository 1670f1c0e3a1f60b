"""The import graph of `mountd/` has no cycle, counting imports inside functions too.

A function-level import only postpones a cycle to the first call (and hides it from a reader of
the imports), so it counts like any other; so do imports under `if TYPE_CHECKING:`. Importing
`a.b.c` also runs the `__init__` of `a.b`, so a module outside a package depends on the
package's `__init__` as well; a module inside a package does not (its package is already being
imported when it runs). Run alone: `.venv/bin/pytest -q tests/test_layering.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mountd"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the package."""
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every import of `path`, anywhere in it; relative ones resolved."""
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # a submodule, or a name
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module of mountd it imports: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for name, line in _imported_names(module, path):
            while name and name not in modules:  # `from a.b import name`: the module is a.b
                name = name.rpartition(".")[0]
            targets = [name]
            parent = name.rpartition(".")[0]
            while parent in modules and not module.startswith(parent + "."):
                targets.append(parent)  # the __init__ of each package on the way runs too
                parent = parent.rpartition(".")[0]
            for target in targets:
                if target and target != module:
                    graph[module].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    edges = [f"  {a} -> {b} ({modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]})"
             for a in component for b in sorted(graph[a]) if b in component]
    return "import cycle among " + ", ".join(component) + ":\n" + "\n".join(edges)


def test_no_import_cycle_in_mountd():
    modules = module_files()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "\n".join(describe(c, graph, modules) for c in found)


def test_the_check_sees_function_level_and_package_cycles(tmp_path):
    """The check itself: a cycle closed only inside a function, one through a package's __init__,
    and a relative import are all found; a package's modules importing each other through it are not."""
    pkg = tmp_path / "mountd"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from mountd import b\n",
        "b.py": "def f():\n    from mountd.a import thing\n",
        "sub/__init__.py": "from mountd.sub.inner import X\n",
        "sub/inner.py": "from mountd.sub import other\nfrom mountd import c\n",
        "sub/other.py": "",
        "c.py": "from .sub.other import Y\n",
        "d.py": "from mountd.sub import other\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules = module_files(pkg)
    graph = import_graph(modules)
    assert "mountd.sub" in graph["mountd.c"] and "mountd.sub.other" in graph["mountd.c"]
    assert "mountd.sub" not in graph["mountd.sub.inner"]
    assert cycles(graph) == [["mountd.a", "mountd.b"], ["mountd.c", "mountd.sub", "mountd.sub.inner"]]
