"""Code a newcomer can read: no function longer than a screen in the four packages."""

import ast

from conftest import REPO

MAX_LINES = 60


def test_no_function_is_longer_than_60_lines():
    long = []
    for package in ("edgeseg", "train", "convert", "benchmarks"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named parts: " + "; ".join(long)
