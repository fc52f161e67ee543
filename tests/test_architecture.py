"""The package's boundaries, as each subpackage's docstring states them: what the served model
imports, what the data layer imports, and no import cycles between the parts."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "src" / "potholes"
TRAINING_ONLY = ["albumentations", "optuna", "sklearn", "matplotlib", "pyspark", "psycopg"]


def loaded_after(*modules: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after importing ``modules``."""
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"})
    return set(json.loads(out.stdout))


def test_inference_loads_no_training_tuning_or_scale_packages_and_no_mlflow():
    loaded = loaded_after("potholes.inference.ensemble", "potholes.inference.openvino",
                          "potholes.inference.onnx_runtime", "potholes.inference.export", "potholes.serving.requests")
    assert "torch" in loaded and "potholes" in loaded  # it did import the code
    assert not loaded & {*TRAINING_ONLY, "mlflow"}, sorted(loaded & {*TRAINING_ONLY, "mlflow"})


def test_the_served_model_loads_nothing_beyond_what_mlflow_pyfunc_itself_loads():
    """MLflow's own pyfunc module imports pyspark when it is installed (not in a served
    environment, whose pins leave it out); our serving code must add no training package."""
    ours = loaded_after("potholes.serving.model_code")
    mlflow_alone = loaded_after("mlflow.pyfunc")
    assert "potholes" in ours and "torch" in ours  # it did import the code
    assert not (ours - mlflow_alone) & set(TRAINING_ONLY), sorted((ours - mlflow_alone) & set(TRAINING_ONLY))


def test_the_data_package_imports_no_torch_and_no_mlflow():
    modules = [f"potholes.data.{p.stem}" for p in (PACKAGE / "data").glob("*.py") if p.stem != "__init__"]
    loaded = loaded_after(*modules)
    assert "pandas" in loaded and not loaded & {"torch", "mlflow"}


def module_imports() -> dict[str, set[str]]:
    """potholes module -> the potholes modules it imports (anywhere in the file)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module else []
            targets |= {t for t in found if t in files and t != name and t != "potholes"}
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles_between_modules_or_subpackages():
    graph = module_imports()
    assert len(graph) > 30 and any(graph.values())  # it read the package
    assert not cycles(graph)
    part = lambda name: name.split(".")[1] if name.count(".") >= 2 else name  # noqa: E731
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(part(name), set()).update(part(t) for t in targets if part(t) != part(name))
    assert not cycles(packages), packages


@pytest.mark.parametrize("package", ["stages", "data", "training", "tuning", "inference", "serving", "scale",
                                     "tracking", "reporting"])
def test_each_subpackage_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and ("May import" in doc or "only code that" in doc), package


def test_the_registered_model_carries_only_the_serving_code_and_its_pins(smoke_store):
    import mlflow

    mlflow.set_tracking_uri(smoke_store.uri)
    local = Path(mlflow.artifacts.download_artifacts(smoke_store.tune["model_uri"]))
    shipped = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert "potholes/serving/pyfunc.py" in shipped and "potholes/inference/ensemble.py" in shipped
    assert not [p for p in shipped if p.startswith(("potholes/training", "potholes/tuning", "potholes/stages",
                                                    "potholes/scale", "potholes/reporting"))], shipped
    requirements = (local / "requirements.txt").read_text().split()
    names = {r.split("==")[0] for r in requirements}
    assert {"torch", "onnxruntime", "openvino", "mlflow", "timm"} <= names
    assert not names & {"albumentations", "optuna", "scikit-learn", "matplotlib", "pyspark", "psycopg"}, names
