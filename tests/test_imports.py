"""No import circles: no module imports, directly or through others, a module that imports it.

Read from the code (every ``import`` statement, those inside functions too), so a circle hidden
behind a function-level import is found as well as one that would fail at start-up. Importing
``a.b.c`` runs ``a`` and ``a.b`` first, so a module also depends on the packages above what it
imports.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from tests.assets import REPO

pytestmark = pytest.mark.unit

PACKAGES = ("poets", "app", "worker")


def _modules() -> Dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> List[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names += [base] + ["{}.{}".format(base, alias.name) for alias in node.names]
    return names


def import_graph() -> Dict[str, Set[str]]:
    """Each project module to the project modules that importing it runs."""
    modules = _modules()

    def resolve(name: str) -> Optional[str]:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(module, path):
            target = resolve(name)
            while target:
                # ``import a.b.c`` runs a and a.b too; a module's own packages are already running.
                if target != module and not module.startswith(target + "."):
                    targets.add(target)
                target = target.rpartition(".")[0] or None
        graph[module] = targets
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the whole service was read
    assert circles(graph) == []


def test_a_circle_through_a_function_level_import_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert "poets.engine.graph_import" in import_graph()["poets.cli.engine_commands"]


def test_the_engine_imports_no_web_or_queue_code() -> None:
    web_or_queue = {"app", "worker", "fastapi", "starlette", "uvicorn", "celery", "kombu"}
    for module, path in _modules().items():
        if module.startswith("poets.engine"):
            tops = {name.split(".")[0] for name in _imported_names(module, path)}
            assert not tops & web_or_queue, module
