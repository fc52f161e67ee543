import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_conda_yaml_mirrors_the_pinned_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"]
    scale = project["optional-dependencies"]["scale"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    python = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")]
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert python == ["python=3.11"]
    assert sorted(pip_section) == sorted(pins + scale)  # the MLproject env runs the scale engines too
    assert all("==" in pin for pin in pins + scale), "every runtime and scale dependency is pinned exactly"
    assert {p.split("[")[0].split("=")[0] for p in scale} == {"pyspark", "psycopg"}
    dev = {p.split("=")[0] for p in project["optional-dependencies"]["dev"]}
    assert not dev & {p.split("[")[0].split("=")[0] for p in pip_section}, "test-only packages stay out of conda.yaml"


def test_scale_extra_stays_out_of_the_registered_models_requirements():
    from potholes.packaging.model_package import pinned_requirements

    requirements = pinned_requirements()
    assert requirements and not any(r.startswith(("pyspark", "psycopg", "pgserver")) for r in requirements)


def test_the_registered_models_pins_come_from_pyproject_without_an_installed_distribution(monkeypatch):
    """`mlflow run` in an environment MLflow builds (conda, uv) runs src/ without installing the
    package: the pins must not depend on the distribution's metadata (tests/test_fresh_machine.py
    runs that environment for real)."""
    import importlib.metadata

    from potholes.packaging.model_package import pinned_requirements

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert pinned_requirements() == project["dependencies"]


def test_mlproject_placeholders_are_not_quoted_by_hand():
    """MLflow shell-quotes every parameter; a hand-written quote around it splits a value with a space."""
    import re

    text = (REPO / "MLproject").read_text()
    assert not re.findall(r"""["']\{\w+\}["']""", text)


def test_mlproject_entry_points_call_the_cli():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert project["name"] == "potholes" and project["conda_env"] == "conda.yaml"
    for name, entry in project["entry_points"].items():
        assert "python -m potholes" in entry["command"], name
        assert entry["parameters"]["data_dir"]["default"] == "data", name


def test_every_mlproject_parameter_reaches_a_cli_option():
    """A parameter added to MLproject but not to its command (or to the CLI) would be logged by
    `mlflow run` and silently ignored."""
    import re

    from potholes.cli import cli

    project = yaml.safe_load((REPO / "MLproject").read_text())
    for name, entry in project["entry_points"].items():
        command = entry["command"]
        for param in entry["parameters"]:
            assert "{" + param + "}" in command, (name, param)
        cli_name = re.search(r"python -m potholes (\w+)", command).group(1)
        options = {opt for p in cli.commands[cli_name].params for opt in p.opts}
        for flag in re.findall(r"(--[a-z-]+) ", command):
            assert flag in options, (name, flag)


def test_cli_help_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "potholes", "--help"], capture_output=True, text=True, check=True)
    assert "prepare" in out.stdout and "synth" in out.stdout
    out = subprocess.run([sys.executable, "-m", "potholes", "prepare", "--help"], capture_output=True, text=True, check=True)
    assert "--data-dir" in out.stdout and "--val-fraction" in out.stdout
