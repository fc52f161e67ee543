"""One decode per stage, and the split `prepare` shows is the split `train` and `tune` use: they
take the manifest `prepare` logged when the files are the same (by content digest)."""

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import potholes.data.images as images_module
from potholes.data.fingerprint import files_digest
from potholes.stages.prepare import SplitConfig, run_prepare
from potholes.stages.train import run_train
from potholes.stages.tune import run_tune
from potholes.tracking import runs as tracking
from potholes.tracking.prepared import read_manifest
from potholes.training.config import resolve_config
from potholes.tuning.search import TuneConfig


@pytest.fixture
def decodes(monkeypatch):
    """Content digest -> how many times bytes with that content were decoded."""
    seen = Counter()
    real = images_module._decode

    def counting(data):
        seen[hashlib.sha256(bytes(data)).hexdigest()] += 1
        return real(data)

    monkeypatch.setattr(images_module, "_decode", counting)
    return seen


def contents(folder: Path, names=None) -> Counter:
    return Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
                   if names is None or p.name in names)


def stage_of(run_id: str) -> dict:
    return MlflowClient().get_run(run_id).data.tags


def first_val_image(run_id: str, data: Path, tmp_path: Path):
    """The validation rows of the manifest a run logged, and its first image's content digest."""
    manifest = read_manifest(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="manifest.csv", dst_path=str(tmp_path))))
    val = manifest[manifest["split"] == "val"]
    return val, hashlib.sha256((data / val["image_path"].iloc[0]).read_bytes()).hexdigest()


def test_train_and_tune_use_the_manifest_prepare_logged_and_decode_each_file_once(tracking_store, synth_data, decodes,
                                                                                 tmp_path):
    tracking.configure()
    train_files = contents(synth_data / "train" / "images") + contents(synth_data / "train" / "mask")

    summary = run_prepare(str(synth_data), progress=False)
    assert decodes == train_files  # the overlay plot reuses the scan's pixels
    prepare_run = mlflow.search_runs(filter_string="tags.`potholes.stage` = 'prepare'",
                                     output_format="list")[0].info.run_id
    val, example = first_val_image(prepare_run, synth_data, tmp_path)

    decodes.clear()
    trained = {m: run_train(resolve_config(m, "smoke"), str(synth_data), progress=False) for m in ("unetpp", "deeplab")}
    # Once per train stage; each run's LoggedModel decodes its input example (the first
    # validation image) once more, to build its signature: the model's reading, not the stage's.
    assert decodes == train_files + train_files + Counter({example: 2})
    for result in trained.values():
        assert stage_of(result["run_id"])["potholes.manifest_from_run"] == prepare_run
        assert result["dataset_digest"] == summary["dataset_digest"]

    decodes.clear()
    tuned = run_tune(str(synth_data), TuneConfig(n_trials=2), progress=False)
    assert first_val_image(tuned["run_id"], synth_data, tmp_path / "tuned")[1] == example  # the same split
    val_files = (contents(synth_data / "train" / "images", set(Path(p).name for p in val["image_path"]))
                 + contents(synth_data / "train" / "mask", set(Path(p).name for p in val["mask_path"])))
    # Registering the model decodes its input example again, to build the signature and check
    # the example: that is the model's, not the stage's reading.
    assert decodes[example] >= 1
    del decodes[example], val_files[example]
    assert decodes == val_files  # tune reads only the validation split, once
    assert tracking.run_dataset_digest(tuned["run_id"]) == summary["dataset_digest"]


def test_another_split_is_checked_and_decoded_once_here(tracking_store, synth_data, decodes, tmp_path):
    tracking.configure()
    run_prepare(str(synth_data), SplitConfig(seed=42), progress=False)
    decodes.clear()
    config = resolve_config("unetpp", "smoke", split_seed=7)
    result = run_train(config, str(synth_data), progress=False)
    train_files = contents(synth_data / "train" / "images") + contents(synth_data / "train" / "mask")
    example = first_val_image(result["run_id"], synth_data, tmp_path)[1]
    assert decodes == train_files + Counter({example: 1})  # and the LoggedModel's input example
    assert "potholes.manifest_from_run" not in stage_of(result["run_id"])


def test_the_files_digest_follows_content_not_location_or_time(tmp_path, synth_data):
    copy = tmp_path / "copy"
    shutil.copytree(synth_data, copy)  # new mtimes, new root

    def digest(root):
        return files_digest(root, [root / "train" / "images", root / "train" / "mask"])

    assert digest(copy) == digest(synth_data)
    image = sorted((copy / "train" / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert digest(copy) != digest(synth_data)
