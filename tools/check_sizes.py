"""Sizes are part of lint: no source file over 400 lines and no function over 80 in actors/, pipeline/, jobs/.

What is not enforced erodes (../shared/style.md): a module a reader cannot hold, or a function that does four
things, is a room to split. Run by `make lint`; prints every offender with its size and exits 1 when there is one.
Generated tables are exempt by name in EXEMPT (none today).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "pipeline", "jobs")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
EXEMPT: set[str] = set()  # repo-relative paths of generated files


def offenders(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = str(path.relative_to(root))
            if name in EXEMPT:
                continue
            text = path.read_text()
            lines = text.count("\n") + (0 if text.endswith("\n") else 1)
            if lines > MAX_FILE_LINES:
                found.append(f"{name}: {lines} lines (at most {MAX_FILE_LINES}): split it into rooms")
            for node in ast.walk(ast.parse(text, name)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    size = node.end_lineno - start + 1
                    if size > MAX_FUNCTION_LINES:
                        found.append(
                            f"{name}:{node.lineno}: {node.name}() is {size} lines (at most {MAX_FUNCTION_LINES})"
                        )
    return found


if __name__ == "__main__":
    problems = offenders()
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)
