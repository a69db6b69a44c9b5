"""The package is layered: a module imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import roadwork

PACKAGE = Path(roadwork.__file__).parent

# Lowest first. serve sits below train and evaluate: it holds the bundle contract that train writes
# and evaluate scores, and never needs either.
LAYERS = [
    {"", "errors", "stats"},   # "" is roadwork/__init__ (its version string)
    {"storage", "progress"},
    {"config"},
    {"data"},
    {"distributed"},
    {"backbones"},
    {"features"},
    {"experts"},
    {"model"},
    {"losses"},
    {"serve"},
    {"evaluate"},
    {"train"},
    {"tune"},
    {"cli", "__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(dotted: str) -> str:
    """The layer name of a ``roadwork.x.y`` module: its first component below the package."""
    return dotted.split(".")[1] if "." in dotted else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``roadwork`` module the file imports, at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "roadwork":
                found += [(node.lineno, f"roadwork.{alias.name}") for alias in node.names
                          if alias.name != "__version__"]
                found += [(node.lineno, "roadwork") for alias in node.names if alias.name == "__version__"]
            elif node.module.startswith("roadwork."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("roadwork")]
    return found


def test_every_module_has_a_layer():
    parts = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert parts - {"__init__"} <= set(RANK), sorted(parts - set(RANK) - {"__init__"})


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = (
            "" if relative.name == "__init__.py" and len(relative.parts) == 1 else relative.parts[0].removesuffix(".py")
        )
        for line, module in _imports(path):
            if RANK[_part(module)] > RANK[own]:
                upward.append(f"{relative}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from roadwork.serve.predictor import Predictor\n    import roadwork.cli\n")
    assert _imports(probe) == [(2, "roadwork.serve.predictor"), (3, "roadwork.cli")]


def test_no_module_imports_itself_through_others():
    """No import cycle between modules (imports inside functions count): each kind of bundle is found
    through the registry in serve/scorer.py, by name, not by importing its loaders' users."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        module = ".".join(("roadwork", *parts))
        graph[module] = {m for _, m in _imports(path)}
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
