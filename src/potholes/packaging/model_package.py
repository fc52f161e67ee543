"""What a registered model carries: only the code serving runs, and only the pins of what that
code imports.

Both are derived, not listed by hand. The code is the closure of ``potholes`` modules imported
(at the top or inside functions) from the models-from-code file; the pins are the project's own
pins (pyproject.toml) of the distributions those modules import, with the pinned distributions
those need in turn (so that timm, which smp builds the encoders with, keeps the version the
weights were trained with). MLflow's own requirements are left to MLflow: the training extras
it would drag in (scikit-learn, matplotlib) are not pinned for serving.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # src/potholes
PYPROJECT = PACKAGE.parents[1] / "pyproject.toml"
MODEL_FILE = PACKAGE / "serving" / "model_code.py"
_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def _imports(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return names


def _module_file(dotted: str) -> Path | None:
    parts = dotted.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
        if parts and candidate.is_file():
            return candidate
    return None


def served_files(entry: Path = MODEL_FILE) -> list[Path]:
    """The package files the served model imports, directly or through each other, with the
    ``__init__.py`` of every package on the way."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            if name.split(".")[0] == "potholes" and (found := _module_file(name)) is not None:
                todo.append(found)
    for path in list(seen):
        for parent in path.relative_to(PACKAGE).parents:
            seen.add(PACKAGE / parent / "__init__.py")
    return sorted(seen)


def stage_code(dst: Path) -> Path:
    """Copy the served files into ``dst/potholes`` (the folder to pass as ``code_paths``)."""
    root = Path(dst) / "potholes"
    for path in served_files():
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return root


def _distribution(requirement: str) -> str:
    return _NAME.match(requirement).group(0).split("[")[0].lower().replace("_", "-")


def serve_requirements(pins: list[str], files: list[Path] | None = None) -> list[str]:
    """The subset of ``pins`` the served files need: the distributions of their third-party
    imports, and the pinned distributions those require, transitively."""
    by_name = {_distribution(pin): pin for pin in pins}
    top = {name.split(".")[0] for path in (files or served_files()) for name in _imports(path)}
    top -= {"potholes", *sys.stdlib_module_names}
    providers = importlib.metadata.packages_distributions()
    wanted = {_distribution(dist) for module in top for dist in providers.get(module, [])}
    todo = [name for name in wanted if name in by_name]
    needed = set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name == "mlflow":
            continue
        for requirement in importlib.metadata.requires(name) or []:
            if "extra ==" not in requirement and (dep := _distribution(requirement)) in by_name:
                todo.append(dep)
    return [pin for pin in pins if _distribution(pin) in needed]


def pinned_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The project's exact runtime pins, so the served model's environment matches training's.

    Read from ``pyproject.toml`` when the code runs from a checkout (as the MLproject does, in
    any environment MLflow builds, with no installed ``potholes`` distribution); from the
    installed distribution's metadata otherwise."""
    import tomllib

    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "potholes":
            return list(project["dependencies"])
    try:
        requirements = importlib.metadata.requires("potholes") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"no pins for the registered model: neither {pyproject} nor an installed potholes "
                           f"distribution was found") from exc
    return [r for r in requirements if "extra ==" not in r]
