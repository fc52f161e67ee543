"""Optional engines of the `scale` extra (Spark, PostgreSQL): skip with the install command on a
developer's machine, fail under CI=true so that CI can never pass by skipping them."""

from __future__ import annotations

import importlib.util
import os

import pytest

SCALE_INSTALL = "pip install -e '.[scale]' (or `make test`, which installs it)"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip, or fail under CI=true, with a reason that says what to install."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing engine is a failure, not a skip]", pytrace=False)
    pytest.skip(reason)


def need_modules(*modules: str) -> None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        missing(f"Python packages {absent} not installed: {SCALE_INSTALL}")


def need_java() -> str:
    """JAVA_HOME of a Java that Spark 4 accepts, or skip/fail saying how to get one."""
    need_modules("pyspark")
    from potholes.scale.spark import SparkSetupError, find_java

    try:
        return find_java()
    except SparkSetupError as exc:
        missing(str(exc))
