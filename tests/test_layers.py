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
    {"data"},
    {"config"},
    {"distributed"},
    {"backbones"},
    {"features"},
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
        own = "" if relative.name == "__init__.py" and len(relative.parts) == 1 else relative.parts[0].removesuffix(".py")
        for line, module in _imports(path):
            if RANK[_part(module)] > RANK[own]:
                upward.append(f"{relative}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from roadwork.serve.predictor import Predictor\n    import roadwork.cli\n")
    assert _imports(probe) == [(2, "roadwork.serve.predictor"), (3, "roadwork.cli")]
