import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import REPO, artifacts, cli_env, round_steps
from mlflow.tracking import MlflowClient

from potholes.data.dataset import build_manifest
from potholes.inference.networks import load_checkpoint
from potholes.stages.train import run_train
from potholes.tracking import runs as tracking
from potholes.training import loop as train_mod
from potholes.training import losses, resume
from potholes.training.config import ConfigError, resolve_config
from potholes.training.loader import SegmentationDataset, load_split, make_loader
from potholes.training.models import lite_timm_state_dict

PER_ROUND = ("train_loss", "val_loss", "val_dice", "lr", "passes", "round_seconds", "train_images_per_second")


@pytest.mark.parametrize("model", ["unetpp", "deeplab"])
def test_smoke_training_is_fully_tracked(in_smoke_store, model):
    result = getattr(in_smoke_store, model)
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == model and run.data.tags["potholes.stage"] == "train"
    assert run.data.params["config.preset"] == "smoke" and run.data.params["config.img_size"] == "64"
    assert run.data.metrics["parameter_count"] > 1e6
    # the smoke budget: 16 steps of 4 images in 2 rounds, whatever the dataset's size
    assert round_steps(result["run_id"]) == [8, 16]
    assert run.data.params["config.plan.total_steps"] == "16" and run.data.params["config.plan.warmup_steps"] == "1"
    for key in PER_ROUND:
        history = client.get_metric_history(result["run_id"], key)
        assert [m.step for m in history] == [8, 16], key
    lrs = [m.value for m in client.get_metric_history(result["run_id"], "lr")]
    assert lrs[0] > 0 and lrs[1] == pytest.approx(0, abs=1e-12)  # the cosine ends at 0 on the last step
    files = artifacts(result["run_id"])
    assert {"checkpoints/best/model.safetensors", "checkpoints/best/model_config.json", "checkpoints/last/last.pt",
            "plots/curves.png", "manifest.csv"} <= files
    prepared = build_manifest(in_smoke_store.data, progress=False)
    expected = tracking.manifest_dataset(prepared.manifest, prepared.layout.root).digest
    assert tracking.run_dataset_digest(result["run_id"]) == expected


def test_best_checkpoint_reproduces_logged_val_dice(in_smoke_store, tmp_path):
    result = in_smoke_store.deeplab
    folder = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="checkpoints/best", dst_path=str(tmp_path))
    model, model_config = load_checkpoint(folder)
    assert model_config["arch"] == "deeplab" and model_config["img_size"] == 64
    config = resolve_config("deeplab", "smoke")
    prepared = build_manifest(in_smoke_store.data, progress=False)
    images, masks = load_split(prepared.layout.root, prepared.manifest, "val", 64, progress=False)
    loader = make_loader(SegmentationDataset(images, masks, config.mean, config.std), config, train=False)
    scores = train_mod.evaluate(model.to(memory_format=torch.channels_last), loader, losses.criterion(config),
                                0.4, torch.device("cpu"))
    logged = MlflowClient().get_run(result["run_id"]).data.metrics["best_val_dice"]
    assert scores["val_dice"] == pytest.approx(logged, abs=1e-6)
    assert logged == pytest.approx(result["best_val_dice"])


def test_dice_per_image_counts_empty_vs_empty_as_one():
    pred = torch.zeros(3, 1, 4, 4)
    truth = torch.zeros(3, 1, 4, 4)
    pred[1, 0, :2] = 1
    truth[1, 0, :1] = 1
    truth[2, 0, 0, 0] = 1
    torch.testing.assert_close(losses.dice_per_image(pred, truth), torch.tensor([1.0, 2 * 4 / 12, 0.0]))


def large_hit_small_missed() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images: a large pothole predicted perfectly, a small one (2 pixels) missed entirely."""
    truth = torch.zeros(2, 1, 32, 32)
    truth[0, 0, :16] = 1
    truth[1, 0, 0, :2] = 1
    logits = torch.where(truth > 0, 20.0, -20.0)
    logits[1] = -20.0
    return logits, truth


def test_image_dice_loss_weighs_a_small_pothole_like_a_large_one():
    logits, truth = large_hit_small_missed()
    per_image = losses.soft_dice_per_image_loss(logits, truth)
    assert per_image == pytest.approx(0.5 * (1 - 1 / 3), abs=1e-3)  # mean of ~0 and 1 - eps / (2 + eps)
    # smp's DiceLoss pools the batch, so the missed small pothole barely counts there.
    pooled = losses.criterion(resolve_config("unetpp", "smoke", focal_weight=0.0))(logits, truth)
    assert pooled < 0.01
    image_loss = losses.criterion(resolve_config("unetpp", "smoke", focal_weight=0.0, loss="image_dice_focal"))
    assert image_loss(logits, truth) == pytest.approx(per_image.item())


def test_lovasz_loss_is_per_image_so_a_missed_small_pothole_counts():
    from segmentation_models_pytorch.losses import LovaszLoss

    logits, truth = large_hit_small_missed()
    lovasz = losses.criterion(resolve_config("unetpp", "smoke", focal_weight=0.0, loss="lovasz_focal"))
    loss = lovasz(logits, truth)
    pooled = LovaszLoss(mode="binary", per_image=False)(logits, truth)
    assert lovasz(torch.where(truth > 0, 20.0, -20.0), truth) == pytest.approx(0.0, abs=1e-6)  # a perfect prediction
    assert loss == pytest.approx(LovaszLoss(mode="binary", per_image=True)(logits, truth).item())
    assert loss > 10 * pooled  # pooled over the batch, 2 missed pixels of 514 barely count


def interrupt_on_round(monkeypatch, round_: int, exc: BaseException):
    calls = {"n": 0}
    original = train_mod.train_round

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == round_:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_round", flaky)


def test_interrupt_then_resume_continues_the_same_run(tracking_store, synth_data, monkeypatch):
    tracking.configure()
    config = resolve_config("unetpp", "smoke", epochs=3)
    interrupt_on_round(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_train(config, str(synth_data), progress=False)
    run = mlflow.search_runs(output_format="list")[0]
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert "checkpoints/best/model.safetensors" in artifacts(run_id)  # the best so far survives

    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store)
    resumed = resolve_config("unetpp", "smoke", epochs=3, resume=run_id)
    result = run_train(resumed, str(synth_data), progress=False)
    assert result["run_id"] == run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == round_steps(run_id)
    assert len(round_steps(run_id)) == 3  # epochs=3: three passes, a round each
    assert len(mlflow.search_runs(search_all_experiments=True)) == 1


def test_resume_names_every_setting_and_the_data_that_differ(tracking_store, synth_data, monkeypatch):
    tracking.configure()
    interrupt_on_round(monkeypatch, 2, KeyboardInterrupt())
    first = resolve_config("unetpp", "smoke")
    with pytest.raises(KeyboardInterrupt):
        run_train(first, str(synth_data), progress=False)
    run_id = mlflow.search_runs(output_format="list")[0].info.run_id
    other = resolve_config("deeplab", "smoke", lr=0.01, split_seed=7, threads=first.threads + 1, resume=run_id)
    with pytest.raises(ConfigError) as refused:
        run_train(other, str(synth_data), progress=False)
    message = str(refused.value)
    for difference in ("model: the run has unetpp, this command deeplab", "lr: the run has 0.001, this command 0.01",
                       "split_seed: the run has 42, this command 7", "dataset digest: the run trained on",
                       f"threads: the run has {first.threads}, this command {first.threads + 1}"):
        assert difference in message, message  # all of them in one message
    # the same settings on other data: only the digest differs
    with pytest.raises(ConfigError, match="(?s)1 difference.*dataset digest"):
        resume.check(resolve_config("unetpp", "smoke", resume=run_id), run_id, digest="0" * 8)
    with pytest.raises(ConfigError, match="does not exist"):
        run_train(resolve_config("deeplab", "smoke", resume="0" * 32), str(synth_data), progress=False)


def test_crop_training_validates_and_keeps_the_whole_image_size(tracking_store, synth_data, tmp_path):
    tracking.configure()
    result = run_train(resolve_config("deeplab", "smoke", img_size=64, crop_size=32, steps=4),
                                 str(synth_data), progress=False)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["config.crop_size"] == "32"
    folder = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="checkpoints/best",
                                                 dst_path=str(tmp_path))
    _, model_config = load_checkpoint(folder)
    assert model_config["img_size"] == 64  # tune, predict and serving feed whole 64 px images


def test_frozen_encoder_layers_keep_their_imagenet_weights(tracking_store, synth_data, tmp_path):
    tracking.configure()
    config = resolve_config("unetpp", "smoke", img_size=64, steps=4, encoder_weights="imagenet", freeze_stride=8)
    result = run_train(config, str(synth_data), progress=False)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["config.freeze_stride"] == "8"
    folder = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="checkpoints/best",
                                                 dst_path=str(tmp_path))
    trained = load_checkpoint(folder)[0].encoder.model.state_dict()
    imagenet = lite_timm_state_dict()
    for frozen in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.2.1.conv_pwl.weight"):
        assert torch.equal(trained[frozen], imagenet[frozen]), frozen
    assert not torch.equal(trained["blocks.3.0.conv_pw.weight"], imagenet["blocks.3.0.conv_pw.weight"])


def test_crash_marks_the_run_failed(tracking_store, synth_data, monkeypatch):
    tracking.configure()
    interrupt_on_round(monkeypatch, 2, RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        run_train(resolve_config("deeplab", "smoke"), str(synth_data), progress=False)
    run = mlflow.search_runs(output_format="list")[0]
    assert run.info.status == "FAILED"
    assert "checkpoints/best/model.safetensors" in artifacts(run.info.run_id)


def test_bad_parameters_fail_before_any_run(tmp_path, synth_data):
    env = cli_env(tmp_path)
    for args, message in [(["--model", "deeplab", "--img-size", "100"], "img_size must be a multiple of 32"),
                          (["--model", "deeplab", "--img-size", "big"],
                           "expected an integer or 'auto' or 'preset', got 'big'"),
                          (["--model", "unetpp", "--epochs", "0"], "epochs must be a positive integer"),
                          (["--model", "unetpp", "--precision", "fp16"], "precision 'fp16' needs CUDA"),
                          (["--model", "unetpp", "--data-dir", str(tmp_path / "none")], "does not exist")]:
        out = subprocess.run([sys.executable, "-m", "potholes", "train", "--data-dir", str(synth_data), *args],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_run_train_entry_point(tmp_path, synth_data):
    """`mlflow run . -e train -P model=deeplab -P preset=smoke --env-manager local`."""
    env = cli_env(tmp_path)
    out = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "-e", "train",
                          "--env-manager", "local", "--experiment-name", "potholes",
                          "-P", "model=deeplab", "-P", "preset=smoke", "-P", f"data_dir={synth_data}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.search_runs(experiment_names=["potholes"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "deeplab"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "val_dice")) == 2
    # one training thread bound to each core (`potholes.training.cpu_affinity`) wherever there are two
    assert run.data.tags["potholes.threads_bound"] == str(len(os.sched_getaffinity(0)) > 1).lower()


def test_full_preset_without_weights_stops_before_any_run(tmp_path, synth_data):
    env = cli_env(tmp_path, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "potholes", "train", "--data-dir", str(synth_data), "--model", "deeplab",
                          "--preset", "full"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert "cannot load 'imagenet' weights for encoder 'resnet101'" in out.stderr
    assert "HF_HUB_CACHE" in out.stderr and "preset=cpu" in out.stderr
    if (tmp_path / "mlflow.db").exists():
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        assert mlflow.search_runs(search_all_experiments=True).empty


def wide_copy(synth_data: Path, folder: Path, rows: int = 48) -> Path:
    """The synthetic set cropped to its top ``rows`` rows: photos twice as wide as high."""
    import shutil

    import cv2

    shutil.copytree(synth_data, folder)
    for path in [*folder.glob("*/images/*"), *folder.glob("*/mask/*")]:
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:rows])
    return folder


def test_wide_photos_train_and_predict_at_their_own_aspect(tracking_store, synth_data, tmp_path, capsys):
    """Issue 23, point 1: 96x48 photos at img_size 96 are seen at 128x64 (not squashed into 96x96)
    in training, validation and the run's own model, whose masks come back at 96x48."""
    import cv2

    from potholes.data.dataset import read_image

    wide = wide_copy(synth_data, tmp_path / "wide")
    tracking.configure()
    result = run_train(resolve_config("deeplab", "smoke", img_size=96, steps=4), str(wide), progress=False)
    assert "photos seen at 128x64 (width x height)" in capsys.readouterr().out
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.params["config.keep_aspect"] == "True"
    folder = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="checkpoints/best",
                                                 dst_path=str(tmp_path))
    assert load_checkpoint(folder)[1]["keep_aspect"] is True

    member = mlflow.pyfunc.load_model(f"models:/{result['model_id']}").unwrap_python_model().predictor
    seen = []
    network = member.models["deeplab"]
    handle = network.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    photo = read_image(next((wide / "test" / "images").iterdir()))
    masks = member.predict_masks([photo, cv2.resize(photo, (96, 96))])
    handle.remove()
    assert sorted(seen) == [(2, 3, 64, 128), (2, 3, 96, 96)]  # each photo at its own aspect
    assert [m.shape for m in masks] == [(48, 96), (96, 96)]

    with pytest.raises(ConfigError, match=r"crop_size 96 does not fit the 128x64 \(width x height\)"):
        run_train(resolve_config("deeplab", "smoke", img_size=96, crop_size=96, steps=4), str(wide), progress=False)
