"""The shell package's import graph: main.py assembles the commands; no command module imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import semcodec.cli

CLI = Path(semcodec.cli.__file__).parent


def _cli_imports(path: Path) -> set[str]:
    """The ``semcodec.cli.*`` modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(f"semcodec.cli.{node.module}")
            else:
                found.update(f"semcodec.cli.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("semcodec.cli."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("semcodec.cli."))
    return found


def test_no_cli_module_imports_main_and_no_cycles():
    graph = {f"semcodec.cli.{p.stem}": _cli_imports(p) for p in CLI.glob("*.py") if p.stem != "__init__"}
    assert "semcodec.cli.semantic" in graph and "semcodec.cli.batch_command" in graph
    assert [m for m, deps in graph.items() if "semcodec.cli.main" in deps] == []
    for start in graph:                                   # depth-first search for a path back to start
        stack, seen = [start], set()
        while stack:
            for dep in graph.get(stack.pop(), ()):
                assert dep != start, f"import cycle through {start}"
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
