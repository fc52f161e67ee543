import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from helpers import REAL_DATA, REPO, artifacts, cli_env, needs_real_data
from mlflow.tracking import MlflowClient

from potholes.stages.prepare import run_prepare
from potholes.tracking import runs as tracking


def check_prepare_run(run_id: str, expected_pairs: int) -> dict:
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["num_pairs"] == expected_pairs
    assert tracking.run_dataset_digest(run_id) == run.data.tags["potholes.dataset_digest"]
    files = artifacts(run_id)
    assert {"summary.json", "manifest.csv", "plots/area_ratio_hist.png",
            "plots/component_area_hist.png", "plots/overlays.png"} <= files
    return tracking.download_json(run_id, "summary.json")


def test_prepare_on_synthetic_data_logs_everything(tracking_store, synth_data, capsys):
    tracking.configure()
    summary = run_prepare(str(synth_data), progress=False)
    run_id = mlflow.search_runs(output_format="list")[0].info.run_id
    logged = check_prepare_run(run_id, 24)
    assert logged["num_pairs"] == summary["num_pairs"] == 24
    assert logged["without_pothole"] >= 1  # the generator leaves ~10 % empty
    assert "MIN_AREA candidate" in capsys.readouterr().out
    # the same data and split parameters give the same digest: later stages rely on it
    again = run_prepare(str(synth_data), progress=False)
    assert again["dataset_digest"] == summary["dataset_digest"]


@needs_real_data
def test_prepare_on_real_data(tracking_store):
    tracking.configure()
    run_prepare(str(REAL_DATA), progress=False)
    run_id = mlflow.search_runs(output_format="list")[0].info.run_id
    summary = check_prepare_run(run_id, 238)
    assert summary["without_pothole"] == 0 and summary["empty_mask_ratio"] == 0
    assert summary["num_val"] == 36


def make_broken_dataset(root: Path) -> None:
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "mask").mkdir(parents=True)
    img = np.full((24, 24, 3), 90, np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[2:9, 2:9] = 255
    for n in range(1, 6):
        cv2.imwrite(str(root / "train" / "images" / f"pothole_{n}.jpg"), img)
        cv2.imwrite(str(root / "train" / "mask" / f"mask_{n}.png"), mask)
    (root / "train" / "images" / "pothole_2.jpg").write_bytes(b"garbage")          # corrupt
    cv2.imwrite(str(root / "train" / "images" / "pothole_03.jpg"), img)            # duplicate number 3
    cv2.imwrite(str(root / "train" / "mask" / "mask_4.png"), np.zeros((10, 12), np.uint8))  # size mismatch
    cv2.imwrite(str(root / "train" / "mask" / "mask_5.png"), (mask > 0).astype(np.uint8))  # a 0/1 mask


def potholes_cli(*args, cwd, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "potholes", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_reports_problems_and_creates_no_run(tracking_store, tmp_path):
    bad = tmp_path / "bad"
    make_broken_dataset(bad)
    out = potholes_cli("prepare", "--data-dir", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    # every problem in the first report, not one per attempt
    assert "two images share the number 3: 'pothole_03.jpg' and 'pothole_3.jpg'" in out.stderr
    assert "pothole_2.jpg" in out.stderr and "not a readable" in out.stderr
    assert "size mismatch: image 'pothole_4.jpg' is 24x24 but mask 'mask_4.png' is 12x10" in out.stderr
    out = potholes_cli("prepare", "--data-dir", str(tmp_path / "missing"), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_zero_one_mask_is_used_not_emptied(tracking_store, tmp_path):
    bad = tmp_path / "bad"
    make_broken_dataset(bad)
    (bad / "train" / "images" / "pothole_03.jpg").unlink()
    (bad / "train" / "images" / "pothole_2.jpg").unlink()
    (bad / "train" / "mask" / "mask_2.png").unlink()
    (bad / "train" / "mask" / "mask_4.png").unlink()
    (bad / "train" / "images" / "pothole_4.jpg").unlink()
    tracking.configure()
    summary = run_prepare(str(bad), progress=False)
    assert summary["num_pairs"] == 3 and summary["without_pothole"] == 0


@pytest.mark.slow
def test_mlflow_run_prepare_entry_point(tmp_path, synth_data):
    """`mlflow run . -e prepare --env-manager local`, as a user runs it."""
    env = cli_env(tmp_path)
    bad = tmp_path / "bad"
    make_broken_dataset(bad)
    (bad / "train" / "images" / "pothole_03.jpg").unlink()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    out = subprocess.run([mlflow_bin, "run", str(REPO), "-e", "prepare", "--env-manager", "local",
                          "-P", f"data_dir={bad}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode != 0
    assert "pothole_2.jpg" in out.stderr and "mask_4.png" in out.stderr
    out = subprocess.run([mlflow_bin, "run", str(REPO), "-e", "prepare", "--env-manager", "local",
                          "-P", f"data_dir={synth_data}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'",
                              output_format="list")
    assert len(runs) == 1
    check_prepare_run(runs[0].info.run_id, 24)
