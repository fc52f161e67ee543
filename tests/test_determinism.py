"""Same data + same params + same seed = same run, on CPU, whatever the worker count."""

import albumentations as A
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from potholes.stages.train import run_train
from potholes.tracking import runs as tracking
from potholes.training import augment
from potholes.training.config import resolve_config
from potholes.training.loader import SegmentationDataset, make_loader


def road_image(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 20:50] = 1
    return image, mask


def test_pipeline_children_share_one_stream_not_one_seed():
    """albumentations' own set_random_seed gives every child the same seed, so all children draw
    the same first number: HorizontalFlip (p=0.5) and Affine (p=0.4) would fire together."""
    flip, affine = A.HorizontalFlip(p=0.5), A.Affine(rotate=(-2, 2), p=0.4)
    pipeline = A.Compose([flip, affine])
    decisions = []
    for seed in range(200):
        augment.seed_transform(pipeline, seed)
        decisions.append((flip.py_random.random() < 0.5, affine.py_random.random() < 0.4))
    assert len(set(decisions)) == 4  # all four combinations occur: the draws are not tied
    assert flip.py_random is affine.py_random is pipeline.py_random  # one stream, nested ones too
    nested = augment.train_transform(1)
    one_of = next(t for t in nested.transforms if isinstance(t, A.OneOf))
    assert one_of.transforms[0].random_generator is nested.random_generator


def test_augmentation_is_a_function_of_seed_pass_and_index():
    image, mask = road_image()
    dataset = SegmentationDataset(np.stack([image] * 4), np.stack([mask] * 4), (0.5,) * 3, (0.5,) * 3,
                                            augment.train_transform(7), seed=7)
    first = [dataset[(1, i)][0] for i in range(4)]
    again = [dataset[(1, i)][0] for i in range(4)]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the same image at different indices or passes is augmented differently
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], dataset[(2, 0)][0])


def test_crops_are_seeded_and_keep_image_and_mask_aligned():
    """``crop_size``: each sample is a random crop, the same for the same (seed, pass, index), and
    the mask is cut from the same place as the image."""
    rng = np.random.default_rng(1)
    blocks = (rng.random((4, 8, 8)) > 0.5).astype(np.uint8)  # 8 px squares: interpolation only touches their edges
    masks = np.kron(blocks, np.ones((1, 8, 8), np.uint8))
    images = np.repeat((masks * 200 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    dataset = SegmentationDataset(images, masks, (0.5,) * 3, (0.5,) * 3,
                                            augment.train_transform(3, crop_size=32), seed=3)
    crops = [dataset[(1, i)] for i in range(4)]
    for (image, mask), (again, _) in zip(crops, [dataset[(1, i)] for i in range(4)]):
        assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        torch.testing.assert_close(image, again, rtol=0, atol=0)
        bright = image[0] > 0  # the pothole pixels were painted bright: the mask must sit on them
        assert (bright == (mask[0] > 0)).float().mean() > 0.9
    assert not torch.equal(crops[0][0], dataset[(2, 0)][0])  # another pass, another crop


def test_pothole_crops_hold_the_one_small_pothole_of_a_large_frame_and_stay_seeded():
    """``pothole_crops``: that share of crops is placed on a pothole pixel, the rest anywhere; at 0 it
    is the random crop models were trained with before the option."""
    masks = np.zeros((6, 128, 256), np.uint8)
    for i, mask in enumerate(masks):
        mask[20 * (i % 4) + 10:20 * (i % 4) + 16, 40 * i + 20:40 * i + 26] = 1  # one 6x6 pothole a frame
    images = np.repeat((masks * 200 + 20)[..., None], 3, axis=-1).astype(np.uint8)

    def share_holding(pothole_crops: float) -> float:
        dataset = SegmentationDataset(images, masks, (0.5,) * 3, (0.5,) * 3,
                                      augment.train_transform(5, 64, pothole_crops), seed=5)
        held = [bool(dataset[(p, i)][1].any()) for p in range(20) for i in range(len(images))]
        again = [bool(dataset[(p, i)][1].any()) for p in range(20) for i in range(len(images))]
        assert held == again  # the same (seed, pass, index), the same crop
        return float(np.mean(held))

    random_share, half, every = share_holding(0.0), share_holding(0.5), share_holding(1.0)
    assert random_share < 0.3  # a 64 px crop of a 256x128 frame misses a 6 px pothole most of the time
    assert 0.5 <= half < 0.8 and every == 1.0
    assert isinstance(augment.train_transform(5, 64, 0.0).transforms[0], A.RandomCrop)


def test_pothole_crops_outside_0_to_1_are_refused_by_name():
    with pytest.raises(Exception, match=r"pothole_crops must be a share from 0 to 1 .* got 1.5"):
        resolve_config("unetpp", "cpu", pothole_crops=1.5, precision="fp32")


def collect(loader, round_: int) -> list[torch.Tensor]:
    loader.sampler.set_round(round_)
    return [images[0] for images, _ in loader]


def test_two_workers_draw_different_augmentations_and_match_one_process():
    image, mask = road_image()
    n = 8
    dataset = SegmentationDataset(np.stack([image] * n), np.stack([mask] * n), (0.5,) * 3, (0.5,) * 3,
                                            augment.train_transform(3), seed=3)
    config = resolve_config("unetpp", "smoke", batch_size=1, num_workers=2, seed=3)
    two = collect(make_loader(dataset, config, train=True, steps_per_round=n), round_=1)
    # batches alternate between the two workers: items 0 and 1 are each worker's first draw,
    # which were identical when every spawned worker started from the same state
    assert not torch.equal(two[0], two[1])
    distinct = {t.numpy().tobytes() for t in two}
    assert len(distinct) >= n - 1  # identical images, (almost) all augmented differently
    single = collect(make_loader(dataset, resolve_config("unetpp", "smoke", batch_size=1, num_workers=0,
                                                                   seed=3), train=True, steps_per_round=n), round_=1)
    for a, b in zip(two, single):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def curves(run_id: str) -> dict[str, list[float]]:
    client = MlflowClient()
    return {key: [m.value for m in client.get_metric_history(run_id, key)] for key in ("train_loss", "val_loss", "val_dice")}


@pytest.mark.slow
def test_same_seed_same_curves_with_two_workers_another_seed_differs(tracking_store, synth_data):
    tracking.configure()
    runs = []
    for seed in (11, 11, 12):
        config = resolve_config("deeplab", "smoke", epochs=2, num_workers=2, seed=seed)
        runs.append(curves(run_train(config, str(synth_data), progress=False)["run_id"]))
    for key in runs[0]:
        assert len(runs[0][key]) == 2
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=0, atol=1e-6, err_msg=key)
    assert not np.allclose(runs[0]["train_loss"], runs[2]["train_loss"], rtol=0, atol=1e-6)


def test_bf16_recipe_is_reproducible_differs_from_fp32_and_keeps_fp32_weights(tracking_store, synth_data, tmp_path):
    """The cpu preset's bf16 steps (with EMA and the Tversky loss, the other recipe options) give
    the same curves for the same seed; the fp32 run differs, so bf16 did reach the steps; the
    kept weights are fp32, as tune, predict and serving expect."""
    import mlflow

    from potholes.inference.networks import load_checkpoint

    tracking.configure()
    runs = {}
    for name, precision in (("bf16", "bf16"), ("again", "bf16"), ("fp32", "fp32")):
        config = resolve_config("unetpp", "smoke", precision=precision, ema=0.9, loss="tversky_focal", steps=8, seed=5)
        runs[name] = run_train(config, str(synth_data), progress=False)["run_id"]
    got = {name: curves(run_id) for name, run_id in runs.items()}
    for key in got["bf16"]:
        np.testing.assert_allclose(got["bf16"][key], got["again"][key], rtol=0, atol=1e-6, err_msg=key)
    assert not np.allclose(got["bf16"]["train_loss"], got["fp32"]["train_loss"], rtol=0, atol=1e-6)
    params = MlflowClient().get_run(runs["bf16"]).data.params
    assert (params["config.precision"], params["config.ema"], params["config.loss"]) == ("bf16", "0.9", "tversky_focal")
    folder = mlflow.artifacts.download_artifacts(run_id=runs["bf16"], artifact_path="checkpoints/best",
                                                 dst_path=str(tmp_path))
    model, _ = load_checkpoint(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.slow
def test_the_whole_main_twice_gives_the_same_metrics(tracking_store, synth_data, tmp_path):
    """train (both models), tune and predict: every Dice and every curve, to 1e-6."""
    from potholes.stages.main import run_main

    tracking.configure()
    results = [run_main(str(synth_data), preset="smoke", n_trials=5, output=str(tmp_path / f"submission{i}.csv"),
                        progress=False) for i in range(2)]
    first, second = (r["metrics"] for r in results)
    for key in ("unetpp_val_dice", "deeplab_val_dice", "tuned_val_dice", "test_dice"):
        assert first[key] == pytest.approx(second[key], abs=1e-6), key
    for model in ("unetpp", "deeplab"):
        a, b = (curves(r[model]["run_id"]) for r in results)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"{model} {key}")
    assert results[0]["tune"]["best_params"] == results[1]["tune"]["best_params"]
    assert (tmp_path / "submission0.csv").read_text() == (tmp_path / "submission1.csv").read_text()
