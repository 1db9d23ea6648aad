"""The architecture, written down where it is enforced.

herbid's packages depend on each other in one direction:

    data → models → inference → evaluation → training → experiments
                    inference → identification → web / export

plus a few leaf modules anyone may use (errors, progress, display, provenance, pools, engine).
Every import of every module — including imports inside functions — is read from the
source (AST) and checked against :data:`ALLOWED`. A new arrow is a design decision:
add it here, with the reason, or do not add it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "herbid"

#: Modules at the top of the package that depend on nothing of herbid but the version.
LEAVES = {"__init__", "errors", "progress", "display", "provenance", "pools", "engine"}
#: The leaves that build on other leaves: the engine runs stages on the process pool, with a progress bar.
LEAF_ARROWS: dict[str, set[str]] = {"engine": {"errors", "pools", "progress"}}
#: package → the packages its modules may import (leaves always allowed).
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "cleaning": {"data"},  # label masks, plant crops and quality scores of dataset images
    "models": set(),  # architectures, weights files and the bundle's file layout
    "inference": {"data", "models"},  # bundle, pixel path, device, the one forward pass
    "evaluation": {"data", "models", "inference"},
    "identification": {"data", "models", "inference"},
    "export": {"data", "models", "inference", "identification"},  # the check compares with identify
    "web": {"data", "models", "inference", "identification"},
    "training": {"data", "models", "inference", "evaluation"},  # test metrics, the LP-FT head's probe
    "experiments": {"data", "models", "inference", "evaluation", "training", "identification"},
    "demo": {"data", "experiments"},
    "cli": {"data", "cleaning", "models", "inference", "evaluation", "identification", "export", "web",
            "training", "experiments", "demo"},
}
#: Where ``herbid.training`` may be imported from: code that uses a model never imports the trainer.
TRAINER_USERS = {"training", "experiments", "cli", "demo"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every herbid module ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; herbid imports by absolute name")
    return {name for name in found if name == "herbid" or name.startswith("herbid.")}


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) → the modules that make that edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        source = _package(module)
        for imported in _imports(path):
            target = _package(imported)
            if target != source:
                edges.setdefault((source, target), []).append(module)
    return edges


def test_every_package_edge_is_an_allowed_arrow() -> None:
    assert set(ALLOWED) | LEAVES >= {_package(_module_name(p)) for p in SRC.rglob("*.py")}, "a package not in ALLOWED"
    wrong = {edge: modules for edge, modules in package_edges().items()
             if edge[1] not in LEAVES and edge[1] not in ALLOWED.get(edge[0], set())}
    assert not wrong, "imports against the architecture: " + "; ".join(
        f"{source} → {target} (in {', '.join(sorted(set(modules)))})" for (source, target), modules in wrong.items())


def test_leaves_import_no_package() -> None:
    for (source, target), modules in package_edges().items():
        if source in LEAVES:
            assert target in {"__init__"} | LEAF_ARROWS.get(source, set()), f"leaf {source} imports {target} ({modules})"


def test_allowed_arrows_have_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "open":
            raise AssertionError("cycle: " + " → ".join([*trail, node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for target in ALLOWED.get(node, ()):
            visit(target, [*trail, node])
        state[node] = "done"

    for package in ALLOWED:
        visit(package, [])


def test_only_the_trainer_side_imports_training() -> None:
    users = {source for source, target in package_edges() if target == "training"}
    assert users <= TRAINER_USERS, f"{sorted(users - TRAINER_USERS)} import herbid.training"


def test_identification_and_web_load_no_trainer_module() -> None:
    code = ("import sys, herbid.identification, herbid.web.app, herbid.export, herbid.evaluation.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith('herbid.training')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


#: Longest module before it must say, in its opening docstring, why it is one cohesive thing.
MAX_LINES = 450


def test_long_modules_say_why_they_are_one_thing() -> None:
    unexplained = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if "One cohesive module" not in doc:
                unexplained.append(f"{path.relative_to(SRC)} ({lines} lines)")
    assert not unexplained, ("over ~450 lines without a 'One cohesive module: …' note in the docstring: "
                             + ", ".join(unexplained))
