"""The shape of the package, checked over its source (AST, nothing imported): no import circle (lazy imports
included), no executor object reaching into another's private attributes, the budget's feasibility problems built
in one module, no module past about 600 lines, and docs/ARCHITECTURE.md naming every module (and only modules that
exist)."""

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "planner"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 620  # "about 600"


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement that can run (at module level or inside a function), `if TYPE_CHECKING:` blocks
    left out."""
    found = []

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    walk_one(other)
                continue
            walk_one(child)

    def walk_one(child):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        walk(child)

    walk(tree)
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, lazily or not: `from planner.a import b` is planner.a.b when that is
    a module, else planner.a."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def test_no_import_circle_in_the_package():
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imports_of(name, path, known))
    circles = [sorted(group) for group in nx.strongly_connected_components(graph) if len(group) > 1]
    assert not circles, f"import circles: {circles}"


def test_the_import_graph_sees_lazy_imports():
    known = modules()
    folder_reader = imports_of("planner.folder.reader", known["planner.folder.reader"], known)
    assert "planner.folder.hub" in folder_reader  # imported inside read(), only for a hub id


EXECUTOR = PACKAGE / "executor"


def private_reaches(path: Path) -> list[str]:
    """`x._name` in `path` where `x` is not `self`/`cls`: another object's private attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_executor_object_reads_or_writes_another_objects_private_attributes():
    # compat.py is where diffusers', accelerate's and torch's private attributes are read, each named once
    found = [hit for path in sorted(EXECUTOR.glob("*.py")) if path.name != "compat.py" for hit in private_reaches(path)]
    assert found == []


def test_the_private_attribute_check_finds_a_reach():
    sample = ROOT / "tests" / "data" / "architecture" / "reaches.py"
    assert private_reaches(sample) == ["reaches.py:5: handle._hooked", "reaches.py:6: other._prepare"]


FEASIBILITY = {"PLN307", "PLN409", "PLN411"}
BUILDER = PACKAGE / "budget" / "problems.py"


def feasibility_uses(path: Path) -> list[str]:
    """Places in `path` that use PLN307, PLN409 or PLN411 other than by comparing its `.id` or importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name not in FEASIBILITY:
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "id":
            continue
        if isinstance(node, ast.Name) and isinstance(parent, ast.Attribute) and parent.value is node and \
                isinstance(parents.get(parent), ast.Attribute):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_budget_feasibility_problems_are_built_in_one_module():
    outside = [hit for path in sorted(PACKAGE.rglob("*.py")) if "rules" not in path.relative_to(PACKAGE).parts
               and path != BUILDER for hit in feasibility_uses(path)]
    assert outside == []
    assert feasibility_uses(BUILDER)  # and they are built there


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_much_longer_than_600_lines(name):
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


_NAMED = re.compile(r"`(planner/(?:[\w/]*(?:\.py|/))?)`")


def named_in_architecture() -> set[str]:
    """The modules docs/ARCHITECTURE.md names, as `planner/x/y.py` (a package as `planner/x/`)."""
    return set(_NAMED.findall(ARCHITECTURE.read_text(encoding="utf-8")))


def _spelled(name: str, path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    return relative[: -len("__init__.py")] if path.name == "__init__.py" else relative


def test_the_architecture_names_every_module():
    named = named_in_architecture()
    missing = [_spelled(name, path) for name, path in modules().items() if _spelled(name, path) not in named]
    assert missing == [], "docs/ARCHITECTURE.md does not name these modules"


def test_every_module_the_architecture_names_exists():
    absent = sorted(spelled for spelled in named_in_architecture() if not (ROOT / spelled).exists())
    assert absent == []


def test_the_readme_links_the_architecture():
    assert "docs/ARCHITECTURE.md" in (ROOT / "README.md").read_text(encoding="utf-8")
