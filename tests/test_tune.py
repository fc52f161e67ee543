import base64

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import REAL_DATA, artifacts
from mlflow.tracking import MlflowClient

from potholes.stages.tune import run_tune
from potholes.tracking import runs as tracking
from potholes.tuning.registry import CHALLENGER, CHAMPION, NOT_COMPARED_TAG, promote
from potholes.tuning.search import TuneConfig


def child_runs(parent_id: str):
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              output_format="list")


def test_tune_logs_trials_baselines_and_registers_champion(in_smoke_store):
    tuned = in_smoke_store.tune
    parent = MlflowClient().get_run(tuned["run_id"])
    assert parent.info.status == "FINISHED"
    trials = child_runs(tuned["run_id"])
    assert len(trials) == 4
    assert all({"config.w_unetpp", "config.threshold", "config.min_area"} <= set(t.data.params) for t in trials)
    assert all("val_dice" in t.data.metrics for t in trials)
    assert max(t.data.metrics["val_dice"] for t in trials) == pytest.approx(parent.data.metrics["best_val_dice"])
    for key in ("baseline_unetpp_dice", "baseline_deeplab_dice", "baseline_blend50_dice"):
        assert 0 <= parent.data.metrics[key] <= 1
    # the first trial is the seed's default, so tuning cannot end below the 50/50@0.4 blend
    # (it is scored with the smallest min-area of the search space)
    assert parent.data.metrics["best_val_dice"] >= min(t.data.metrics["val_dice"] for t in trials)
    assert {"plots/optimization_history.png"} <= artifacts(tuned["run_id"])
    version = MlflowClient().get_model_version_by_alias("pothole-ensemble", CHAMPION)
    assert str(version.version) == tuned["version"]
    assert float(version.tags["val_dice"]) == pytest.approx(tuned["best_val_dice"], abs=1e-6)
    assert version.tags["unetpp_run"] == in_smoke_store.unetpp["run_id"]
    assert "Validation Dice" in version.description


def test_registered_model_loads_by_alias_and_predicts(in_smoke_store):
    model = mlflow.pyfunc.load_model("models:/pothole-ensemble@champion")
    source = REAL_DATA / "test" / "images" / "pothole_17.jpg"
    if not source.exists():
        source = next((in_smoke_store.data / "test" / "images").iterdir())
    frame = pd.DataFrame({"image": [base64.b64encode(source.read_bytes()).decode()]})
    out = model.predict(frame)
    assert list(out.columns) == ["rle", "height", "width", "pothole_pixels", "pothole_fraction", "num_potholes", "potholes"]
    from potholes.data.dataset import read_image
    from potholes.inference.postprocess import rle_decode

    h, w = read_image(source).shape[:2]
    assert (out.loc[0, "height"], out.loc[0, "width"]) == (h, w)
    assert rle_decode(out.loc[0, "rle"], (h, w)).sum() == out.loc[0, "pothole_pixels"]
    # params override the tuned threshold: a threshold near 1 leaves (almost) nothing
    strict = model.predict(frame, params={"threshold": 0.999, "min_area": 0})
    assert strict.loc[0, "pothole_pixels"] <= out.loc[0, "pothole_pixels"]


def test_alias_moves_only_to_a_better_model(tracking_store):
    tracking.configure()
    client = MlflowClient()
    client.create_registered_model("m")
    versions = []
    for dice in (0.5, 0.4, 0.7):
        v = client.create_model_version("m", source="file:///nowhere")
        client.set_model_version_tag("m", v.version, "val_dice", str(dice))
        versions.append((v.version, promote("m", v.version, dice)))
    assert [alias for _, alias in versions] == [CHAMPION, CHALLENGER, CHAMPION]
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == str(versions[2][0])
    assert str(client.get_model_version_by_alias("m", CHALLENGER).version) == str(versions[1][0])


def test_champion_is_compared_only_on_the_same_validation_data(tracking_store, capsys):
    tracking.configure()
    client = MlflowClient()
    client.create_registered_model("m")

    def register(dice: float, digest: str, force: bool = False):
        v = client.create_model_version("m", source="file:///nowhere")
        client.set_model_version_tag("m", v.version, "val_dice", str(dice))
        client.set_model_version_tag("m", v.version, "dataset_digest", digest)
        return v.version, promote("m", v.version, dice, digest, force=force)

    real, _ = register(0.70, "roads")
    demo, alias = register(0.95, "synthetic")  # a higher Dice, on other data: not compared
    assert alias is None
    assert "was measured on other data" in client.get_model_version("m", demo).tags[NOT_COMPARED_TAG]
    assert "tune --promote" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == str(real)
    better, alias = register(0.72, "roads")  # the same data: compared, and better
    assert alias == CHAMPION and NOT_COMPARED_TAG not in client.get_model_version("m", better).tags
    forced, alias = register(0.10, "synthetic", force=True)
    assert alias == CHAMPION and str(client.get_model_version_by_alias("m", CHAMPION).version) == str(forced)


class StopAfter:
    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self, study, trial):
        self.seen += 1
        if self.seen >= self.n:
            raise KeyboardInterrupt


def test_interrupted_study_resumes_without_losing_or_repeating_trials(in_smoke_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = dict(n_trials=6, storage=storage, study_name="resume-me", registered_model="resume-model",
                  unetpp_run=in_smoke_store.unetpp["run_id"], deeplab_run=in_smoke_store.deeplab["run_id"])
    with pytest.raises(KeyboardInterrupt):
        run_tune(str(in_smoke_store.data), TuneConfig(**config, extra_callbacks=(StopAfter(3),)), progress=False)
    study = optuna.load_study(study_name="resume-me", storage=storage)
    first = [t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert len(first) == 3
    result = run_tune(str(in_smoke_store.data), TuneConfig(**config), progress=False)
    study = optuna.load_study(study_name="resume-me", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 6
    assert [t.params for t in complete[:3]] == first
    assert len(child_runs(result["run_id"])) == 6  # the new parent shows the whole study
    # running again with the same n_trials adds nothing
    again = run_tune(str(in_smoke_store.data), TuneConfig(**config), progress=False)
    assert len(optuna.load_study(study_name="resume-me", storage=storage).trials) == 6
    assert MlflowClient().get_run(again["run_id"]).data.metrics["trials_run_now"] == 0


def test_tune_rejects_wrong_runs(in_smoke_store, tmp_path):
    data = str(in_smoke_store.data)
    ok = dict(unetpp_run=in_smoke_store.unetpp["run_id"], deeplab_run=in_smoke_store.deeplab["run_id"],
              storage=f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ValueError, match="does not exist"):
        run_tune(data, TuneConfig(**ok | {"unetpp_run": "f" * 32}), progress=False)
    with pytest.raises(ValueError, match="is not a train run of model 'unetpp'"):
        run_tune(data, TuneConfig(**ok | {"unetpp_run": in_smoke_store.deeplab["run_id"]}), progress=False)
    with pytest.raises(ValueError, match="different split"):
        run_tune(data, TuneConfig(**ok, val_fraction=0.3), progress=False)
    with pytest.raises(ValueError, match="threshold_min"):
        run_tune(data, TuneConfig(**ok, threshold_min=0.6, threshold_max=0.5), progress=False)


def test_tune_defaults_to_latest_runs_on_the_same_split(in_smoke_store, tmp_path):
    from potholes.tuning.search import latest_train_run

    prepared_digest = tracking.run_dataset_digest(in_smoke_store.unetpp["run_id"])
    assert latest_train_run("unetpp", prepared_digest) == in_smoke_store.unetpp["run_id"]
    with pytest.raises(ValueError, match="no finished train run"):
        latest_train_run("unetpp", "deadbeef")


def test_cached_logits_score_like_a_full_rerun(in_smoke_store, tmp_path):
    """Blending cached logits gives the same Dice as running the ensemble afresh (the seed's way)."""
    from potholes.data.dataset import build_manifest
    from potholes.inference import postprocess as pp
    from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
    from potholes.training.loader import load_split
    from potholes.tuning.search import download_best_checkpoint, score

    dirs = {m: download_best_checkpoint(getattr(in_smoke_store, m)["run_id"], tmp_path / m) for m in ("unetpp", "deeplab")}
    predictor = EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig(img_size=64))
    prepared = build_manifest(in_smoke_store.data, progress=False)
    images, masks = load_split(prepared.layout.root, prepared.manifest, "val", 64, progress=False)
    logits = predictor.member_logit_arrays(list(images))
    predictor.config.w_unetpp = 0.3
    fresh = np.mean([pp.dice_score(pp.remove_small_components(p > 0.35, 3), m)
                     for p, m in zip(predictor.probabilities(list(images)), masks)])
    assert score(logits, masks, 0.3, 0.35, 3) == pytest.approx(fresh)
