"""`potholes predict --engine spark`: the same submission as the local engine, scored on Spark
(local[2] here), and clear errors for a bad engine, master or Java."""

import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from engines import need_java, need_modules
from helpers import cli_env
from pg import free_port

from potholes.cli import cli
from potholes.scale.spark import SparkSetupError, check_master, preflight
from potholes.stages.predict import PredictConfig, run_predict


def param(run, name: str):
    """A logged param by its name, with or without a prefix such as ``config.``."""
    return next((v for k, v in run.data.params.items() if k == name or k.endswith(f".{name}")), None)


@pytest.mark.slow
def test_spark_engine_writes_the_local_engines_submission(in_smoke_store, tmp_path):
    need_java()
    local = tmp_path / "local" / "submission.csv"
    run_predict(str(in_smoke_store.data), PredictConfig(output=str(local)), progress=False)

    spark = tmp_path / "spark" / "submission.csv"
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=in_smoke_store.uri)
    out = subprocess.run([str(Path(sys.executable).parent / "potholes"), "predict", "--data-dir", str(in_smoke_store.data),
                          "--output", str(spark), "--engine", "spark", "--spark-master", "local[2]"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    assert out.returncode == 0, out.stderr[-4000:]

    expected = pd.read_csv(local, keep_default_na=False)
    written = pd.read_csv(spark, keep_default_na=False)
    sample = pd.read_csv(in_smoke_store.data / "sample_submission.csv")
    assert written["ImageId"].tolist() == sample["ImageId"].tolist()  # sample order, not Spark's
    assert len(written) == len(expected) == len(sample)
    for (image_id, rle), (_, want) in zip(written.itertuples(index=False), expected.itertuples(index=False)):
        assert rle == want, image_id
    assert (written["rle"] != "").any()  # not trivially equal
    # the per-pothole table comes from the same model output
    pd.testing.assert_frame_equal(pd.read_csv(spark.parent / "submission.potholes.csv"),
                                  pd.read_csv(local.parent / "submission.potholes.csv"))

    runs = {param(r, "output"): r for r in mlflow.search_runs(
        filter_string="tags.`potholes.stage` = 'predict'", search_all_experiments=True, output_format="list")}
    on_spark, on_local = runs[str(spark)], runs[str(local)]
    assert on_spark.info.status == "FINISHED"
    assert param(on_spark, "engine") == "spark" and param(on_spark, "spark_master") == "local[2]"
    assert param(on_local, "engine") == "local"
    assert on_spark.data.metrics["test_dice"] == pytest.approx(on_local.data.metrics["test_dice"])


def _runs(uri):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_bad_engine_or_master_fails_with_exit_2_and_no_run(in_smoke_store, tmp_path):
    before = len(_runs(in_smoke_store.uri))
    data = str(in_smoke_store.data)
    runner = CliRunner()

    result = runner.invoke(cli, ["predict", "--data-dir", data, "--engine", "flink"])
    assert result.exit_code == 2
    assert "--engine" in result.output and "flink" in result.output and "spark" in result.output

    port = free_port()  # nothing listens there
    result = runner.invoke(cli, ["predict", "--data-dir", data, "--engine", "spark",
                                 "--spark-master", f"spark://127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert f"--spark-master: got 'spark://127.0.0.1:{port}'" in result.output
    assert "expected local, local[N]" in result.output and "no Spark master answers" in result.output

    result = runner.invoke(cli, ["predict", "--data-dir", data, "--engine", "spark", "--spark-master", "locale[2]"])
    assert result.exit_code == 2 and "not a Spark master URL" in result.output

    runs = _runs(in_smoke_store.uri)
    assert len(runs) == before and not [r for r in runs if r.info.status == "RUNNING"]


def test_master_forms():
    for good in ("local", "local[2]", "local[*]", "local[4,2]", "yarn"):
        assert check_master(good) == good
    for bad in ("local[0]", "local[x]", "", "mesos://h:1", "spark://nohostport", "k8s://"):
        with pytest.raises(SparkSetupError, match="--spark-master"):
            check_master(bad)
    with socket.socket() as listening:  # a standalone master that answers is accepted
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert check_master(f"spark://127.0.0.1:{port}") == f"spark://127.0.0.1:{port}"
        assert check_master(f"spark://127.0.0.1:{free_port()},127.0.0.1:{port}")  # one of several masters up


def test_unusable_java_is_named(monkeypatch, tmp_path):
    need_modules("pyspark")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    with pytest.raises(SparkSetupError, match=r"JAVA_HOME=.*no-java: no runnable bin/java.*openjdk-17-jre-headless"):
        preflight("local[2]")


def test_a_missing_engine_skips_on_a_workstation_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"pip install -e '.\[scale\]'.*CI=true"):
        need_modules("no_such_engine_module")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"no_such_engine_module.*pip install -e '.\[scale\]'"):
        need_modules("no_such_engine_module")


def test_missing_pyspark_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else real(name, *a))
    with pytest.raises(SparkSetupError, match=r"needs pyspark, which is not installed: pip install -e '.\[scale\]'"):
        preflight("local[2]")
