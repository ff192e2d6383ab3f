"""Find import circles: a module of the given packages that imports (at any depth, lazily inside a function or not)
a module that imports it back. Exits 1 naming each circle, 0 when there is none.

    python scripts/import_cycles.py [PACKAGE ...]    (default: planner.cli)

Every `import` and `from ... import` in a module's source counts, wherever it is. `from package import name` is an
import of the submodule `package.name` when there is one, else of the package itself; the parent packages Python
imports first (the package `__init__` before any of its modules) are not counted: they are never imported back
halfway.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(top: str = "planner") -> dict[str, Path]:
    """Every module of the package `top` under the repository, by dotted name."""
    found = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that the module `name` (its source at `path`) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def circles(packages: list[str]) -> list[list[str]]:
    """Each shortest circle through a module of `packages`: [module, ..., module]."""
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = []
    for start in sorted(known):
        if not any(start == p or start.startswith(p + ".") for p in packages):
            continue
        paths, queue = {start: [start]}, [start]
        while queue:  # breadth first: the shortest way back to `start`
            here = queue.pop(0)
            for there in sorted(graph[here]):
                if there == start:
                    found.append(paths[here] + [start])
                    queue = []
                    break
                if there not in paths:
                    paths[there] = paths[here] + [there]
                    queue.append(there)
    return found


def main(argv: list[str]) -> int:
    found = circles(argv or ["planner.cli"])
    for circle in found:
        print(" -> ".join(circle))
    print(f"{len(found)} module(s) in an import circle" if found else "no import circle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
