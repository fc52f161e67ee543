"""What the MLflow UI shows, read back through the MLflow client: preview images by step, the
per-image tables, member LoggedModels that load, `best` train runs, the ensemble's test score on
its model page, and system metrics for every stage."""

import base64
import re
from collections import defaultdict

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import artifacts, round_steps
from mlflow.tracking import MlflowClient
from PIL import Image

from potholes.reporting import previews
from potholes.tracking import runs as tracking

IMAGE_FILE = re.compile(r"^images/(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")


def image_steps(run_id: str) -> dict[str, list[int]]:
    """Image-grid key -> the steps it was logged at, from the run's step-keyed image files."""
    found = defaultdict(list)
    for path in artifacts(run_id, "images"):
        if (match := IMAGE_FILE.match(path)) is not None:
            found[match["key"].replace("~", "/")].append(int(match["step"]))
    return {key: sorted(steps) for key, steps in found.items()}


def val_rows(run_id: str) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="manifest.csv")
    manifest = pd.read_csv(local)
    return manifest[manifest["split"] == "val"].reset_index(drop=True)


def test_previews_take_an_empty_image_the_smallest_potholes_and_a_spread_of_sizes():
    sizes = [0.0, 0.30, 0.001, 0.05, 0.0, 0.20, 0.002, 0.10, 0.0005, 0.15]
    val = pd.DataFrame({"area_ratio": sizes, "height": 100, "width": 100,
                        "min_component_pixels": [int(s * 10_000) for s in sizes]})
    chosen = previews.choose(val)
    assert len(chosen) == 6 and chosen == sorted(set(chosen))
    assert 0 in chosen and 4 not in chosen  # one empty image, not two
    assert {8, 2} <= set(chosen)  # the two smallest potholes (half of the five after the empty one)
    assert {6, 7, 1} <= set(chosen)  # the rest spread by area: its smallest, its middle, its largest
    assert previews.choose(val.iloc[:3]) == [0, 1, 2]  # fewer images than previews: all of them
    assert previews.choose(val) == chosen  # the split alone decides


def test_train_runs_show_the_same_validation_previews_at_every_round(in_smoke_store):
    keys = {}
    for model in ("unetpp", "deeplab"):
        run_id = getattr(in_smoke_store, model)["run_id"]
        logged = image_steps(run_id)
        assert all(steps == [0, *round_steps(run_id)] for steps in logged.values()), logged  # 0: before training
        keys[model] = set(logged)
        val = val_rows(run_id)
        smallest = (val["min_component_pixels"] / (val["height"] * val["width"])).replace(0, np.inf).idxmin()
        assert previews.key("val", val.loc[smallest, "image_path"]) in logged  # the smallest pothole is shown
        assert len(logged) == min(previews.COUNT, len(val))
    assert keys["unetpp"] == keys["deeplab"]  # two runs on one split line up in the image grid
    tune = image_steps(in_smoke_store.tune["run_id"])
    assert set(tune) == keys["unetpp"] and all(steps == [0] for steps in tune.values())  # the best trial's blend
    panel = next(p for p in artifacts(in_smoke_store.unetpp["run_id"], "images") if p.endswith(".png"))
    with Image.open(mlflow.artifacts.download_artifacts(run_id=in_smoke_store.unetpp["run_id"], artifact_path=panel)) as img:
        assert max(img.size) <= previews.MAX_SIDE


def test_tune_logs_a_per_image_table_of_its_best_trial(in_smoke_store):
    run_id = in_smoke_store.tune["run_id"]
    table = MlflowClient().load_table(mlflow.get_run(run_id).info.experiment_id, "tables/val_images.json",
                                      run_ids=[run_id])
    assert len(table) == len(val_rows(run_id))
    assert {"image", "dice", "iou", "true_pixels", "predicted_pixels", "size_bucket", "true_potholes",
            "predicted_potholes"} <= set(table.columns)
    # the table's Dice is the objective's: their mean is the tuned value
    assert table["dice"].mean() == pytest.approx(in_smoke_store.tune["best_val_dice"])
    assert set(table["size_bucket"]) <= {"empty", "small", "medium", "large"}


def test_each_train_run_logs_a_member_model_that_loads_and_predicts_like_its_checkpoint(in_smoke_store, tmp_path):
    from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor

    result = in_smoke_store.deeplab
    run = MlflowClient().get_run(result["run_id"])
    logged = mlflow.get_logged_model(result["model_id"])
    assert str(logged.status).endswith("READY") and logged.source_run_id == result["run_id"]
    assert logged.params["arch"] == "deeplab" and logged.params["preset"] == "smoke"
    digest = tracking.run_dataset_digest(result["run_id"])
    linked = {m.key for m in logged.metrics if m.dataset_digest == digest and m.dataset_name == tracking.DATASET_NAME}
    assert {"val_dice", "best_val_dice", "train_loss"} <= linked  # metrics tied to the data that judged them
    model = mlflow.pyfunc.load_model(f"models:/{result['model_id']}")
    image = next((in_smoke_store.data / "test" / "images").iterdir())
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(image.read_bytes()).decode("ascii")]}))
    best = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="checkpoints/best",
                                               dst_path=str(tmp_path))
    own = EnsemblePredictor.from_checkpoints({"deeplab": best}, EnsembleConfig(
        threshold=float(run.data.params["config.val_threshold"]), img_size=int(run.data.params["config.img_size"])))
    from potholes.data.dataset import read_image
    from potholes.inference.postprocess import rle_encode

    assert answer["rle"].tolist() == [rle_encode(own.predict_masks([read_image(image)])[0])]
    assert answer["num_potholes"].iloc[0] == len(own.predict([read_image(image)])[0][1])


def fake_train_run(model: str, dice: float, digest_frame: pd.DataFrame, finished: bool = True) -> str:
    """A train run with a LoggedModel whose best_val_dice is linked to ``digest_frame``'s dataset."""
    with tracking.stage_run("train", run_name=f"train-{model}", tags={"model": model}) as run:
        dataset = tracking.log_manifest(digest_frame, "data", context="training")
        model_id = mlflow.initialize_logged_model(name=model, params={"arch": model},
                                                  tags={"potholes.stage": "train"}).model_id
        tracking.log_metrics({"best_val_dice": dice}, step=8, model_id=model_id, dataset=dataset)
        if finished:
            mlflow.finalize_logged_model(model_id, "READY")
    if not finished:
        MlflowClient().set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


def test_best_takes_the_highest_dice_on_this_split_not_the_newest(tracking_store):
    from potholes.errors import ConfigError
    from potholes.tuning.search import best_train_run, choose_train_run

    tracking.configure()
    split = pd.DataFrame({"id": [1, 2, 3], "split": ["train", "train", "val"]})
    other = pd.DataFrame({"id": [1, 2, 3], "split": ["train", "val", "train"]})
    digest = tracking.manifest_dataset(split, "data").digest
    good = fake_train_run("unetpp", 0.61, split)
    newer = fake_train_run("unetpp", 0.52, split)  # newer, worse
    fake_train_run("unetpp", 0.90, other)  # better, on another split
    fake_train_run("unetpp", 0.95, split, finished=False)  # better, but its run was killed
    fake_train_run("deeplab", 0.99, split)  # better, another model
    assert best_train_run("unetpp", digest) == (good, pytest.approx(0.61))
    assert choose_train_run("unetpp", "best", digest) == good
    assert choose_train_run("unetpp", None, digest) == newer  # latest: the newest finished one
    with pytest.raises(ConfigError, match="deeplab_run=best: no finished train run of model 'deeplab'"):
        best_train_run("deeplab", tracking.manifest_dataset(other, "data").digest)


def test_predict_links_its_test_score_to_the_ensemble_and_logs_what_the_ui_shows(in_smoke_store, tmp_path,
                                                                                 monkeypatch):
    from potholes.stages.predict import TEST_DATASET, PredictConfig, run_predict

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = in_smoke_store.tune["model_uri"]
    result = run_predict(str(in_smoke_store.data), PredictConfig(model_uri=uri, output=str(tmp_path / "s.csv")),
                         progress=False)
    client = MlflowClient()
    run = mlflow.search_runs(filter_string="tags.`potholes.stage` = 'predict'", search_all_experiments=True,
                             order_by=["attributes.start_time DESC"], output_format="list")[0]
    model_id = mlflow.models.get_model_info(uri).model_id
    inputs = client.get_run(run.info.run_id).inputs
    evaluation = [d for d in inputs.dataset_inputs if d.dataset.name == TEST_DATASET]
    assert [t.value for t in evaluation[0].tags if t.key == "mlflow.data.context"] == ["evaluation"]
    assert [m.model_id for m in inputs.model_inputs] == [model_id]
    # the ensemble's model page: its test score, tied to this run and the test set
    scored = [m for m in mlflow.get_logged_model(model_id).metrics
              if m.key == "test_dice" and m.run_id == run.info.run_id]
    assert [(m.value, m.dataset_name, m.dataset_digest) for m in scored] == \
        [(pytest.approx(result["test_dice"]), TEST_DATASET, evaluation[0].dataset.digest)]
    table = client.load_table(run.info.experiment_id, "tables/test_images.json", run_ids=[run.info.run_id])
    scores = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test_scores.csv"))
    assert table["ImageId"].tolist() == scores["ImageId"].tolist()
    assert table["dice"].tolist() == pytest.approx(scores["dice"].tolist())
    assert {"iou", "true_pixels", "predicted_pixels", "size_bucket", "true_potholes", "predicted_potholes"} <= set(table)
    worst = image_steps(run.info.run_id)
    lowest = scores.nsmallest(len(worst), "dice")
    assert 0 < len(worst) <= 8 and sorted(worst) == [
        f"{previews.key(f'test_worst/{rank:02d}', path)} dice {dice:.3f}"
        for rank, (path, dice) in enumerate(zip(lowest["image_path"], lowest["dice"]), start=1)]
    assert "system/cpu_utilization_percentage" in run.data.metrics


def test_tune_logs_system_metrics(in_smoke_store):
    assert "system/cpu_utilization_percentage" in mlflow.get_run(in_smoke_store.tune["run_id"]).data.metrics


def test_outline_keeps_the_aspect_and_draws_both_masks():
    image = np.zeros((300, 600, 3), np.uint8)
    truth = np.zeros((300, 600), np.uint8)
    truth[100:200, 100:200] = 1
    prediction = np.zeros_like(truth)
    prediction[100:200, 400:500] = 1
    panel = previews.outline(image, truth, prediction)
    assert panel.shape == (128, 256, 3)
    left, right = panel[:, :128], panel[:, 128:]
    assert (left == previews.TRUTH).all(-1).any() and not (left == previews.PREDICTION).all(-1).any()
    assert (right == previews.PREDICTION).all(-1).any() and not (right == previews.TRUTH).all(-1).any()
