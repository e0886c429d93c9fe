"""The engine's messages fit every caller: the CLI's users see them too, so they name no HTTP
endpoint (the API adds its own where it needs one)."""

import ast
import re
from pathlib import Path
from typing import Iterator, Set, Tuple

import pytest

from tests.assets import REPO

pytestmark = pytest.mark.unit

ENDPOINT = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) /")


def _docstrings(tree: ast.AST) -> Set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _strings(path: Path) -> Iterator[Tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_engine_message_names_an_http_endpoint() -> None:
    named = [
        "{}:{}: {}".format(path.relative_to(REPO), line, text)
        for path in sorted((REPO / "poets" / "engine").rglob("*.py"))
        for line, text in _strings(path)
        if ENDPOINT.search(text)
    ]
    assert not named, "\n".join(named)
