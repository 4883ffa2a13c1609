"""The layers read top-down: no import cycle among the modules of app/, ml3core/ and worker/.

Every import counts, also those inside functions: a lazy import still means the lower module
knows the upper one, which is the circle this test exists to forbid. Only ``if TYPE_CHECKING:``
blocks are left out (they never run). The implicit import of a parent package (importing
``a.b.c`` runs ``a/__init__``) is not an edge, as in every import linter; an explicit import
of a package is an edge to its ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("app", "ml3core", "worker")


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                # ``from pkg import sub`` imports the submodule when there is one, else pkg itself
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None: depth-first search, three colours."""
    state, path = {}, []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "app.cli.commands" in graph and "ml3core.engine" in graph  # the walk found the house
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_detector_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_point_one_way():
    """ml3core imports neither app nor worker; the service never imports worker (it enqueues by
    name; only the ``ml3 worker`` command starts one); task families never import the layers above."""
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("ml3core"):
            assert not {e for e in edges if e.startswith(("app", "worker"))}, name
        if name.startswith("app") and name != "app.cli.service":
            assert not {e for e in edges if e.startswith("worker")}, name
        if name.startswith("ml3core.tasks"):
            above = {"ml3core.api", "ml3core.engine", "ml3core.metatest", "ml3core.experiments"}
            assert not {e for e in edges if e in above or e.startswith("ml3core.experiments.")}, name


# app/ in layers: a layer may import those below it, never one above it (core is below them all)
FORBIDDEN = {
    "app.core": ("app.db", "app.services", "app.jobs", "app.api", "app.cli", "app.dashboard", "app.main"),
    "app.db": ("app.services", "app.jobs", "app.api", "app.cli", "app.dashboard", "app.main"),
    "app.services": ("app.api", "app.cli", "app.dashboard", "app.main"),
    "app.jobs": ("app.api", "app.cli", "app.dashboard", "app.main"),
    "app.api": ("app.cli", "app.dashboard", "app.main"),
}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for name, edges in sorted(graph.items()):
        for layer, above in FORBIDDEN.items():
            if _within(name, layer):
                out += [f"{name} -> {e}" for e in sorted(edges) if any(_within(e, a) for a in above)]
    return out


def test_app_layers_point_down():
    graph = import_graph()
    assert {"app.api.deps", "app.services.jobs", "app.jobs.runner", "app.db.models", "app.cli.commands"} <= set(graph)
    assert not layer_violations(graph), "imports against the layers: " + "; ".join(layer_violations(graph))
    # routes share through services, not through each other (job creation: app/services/jobs.py)
    routes = {n for n in graph if n.startswith("app.api.routes.")}
    assert not {(n, e) for n in routes for e in graph[n] if e in routes}
    # no module is left at the top of app/ but the application itself (app/main.py)
    assert {n for n in graph if n.count(".") == 1 and n.startswith("app.")} - {"app.main"} == {
        "app.api", "app.cli", "app.core", "app.dashboard", "app.db", "app.jobs", "app.services"}


def test_the_layer_check_sees_a_wrong_import():
    assert layer_violations({"app.db.models": {"app.services.registry"}, "app.services.registry": {"app.db.models"}}) \
        == ["app.db.models -> app.services.registry"]
    assert layer_violations({"app.services.jobs": {"app.api.schemas"}}) == ["app.services.jobs -> app.api.schemas"]
