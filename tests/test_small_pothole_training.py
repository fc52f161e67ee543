"""Two training options for small potholes (issue 23 point 3): copy-paste of pothole patches
between training images, and a loss weight for small components."""

import albumentations as A
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from potholes.stages.train import run_train
from potholes.tracking import runs as tracking
from potholes.training import augment, losses
from potholes.training.config import resolve_config
from potholes.training.copy_paste import PatchBank
from potholes.training.loader import SegmentationDataset

HALF = (0.5,) * 3


def frames(n: int = 4, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Grey frames; frame 1 has a 20x30 pothole painted 200, frame 2 (when n > 2) a 6x6 one painted 120."""
    images = np.full((n, h, w, 3), 40, np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    masks[1, 10:30, 20:50], images[1, 10:30, 20:50] = 1, 200
    if n > 2:
        masks[2, 60:66, 90:96], images[2, 60:66, 90:96] = 1, 120
    return images, masks


def pasting(images, masks, seed: int = 3, crop: int = 0) -> SegmentationDataset:
    bank = PatchBank(images, masks, (crop, crop) if crop else masks.shape[1:])
    return SegmentationDataset(images, masks, HALF, HALF, augment.train_transform(seed, crop, 0.0, copy_paste=1.0),
                               seed, bank)


def test_copy_paste_gives_an_empty_frame_a_pothole_of_another_frame_with_its_pixels():
    images, masks = frames()
    cache = images.copy(), masks.copy()
    dataset = pasting(images, masks)
    got = []
    for pass_ in range(12):
        image, mask = dataset[(pass_, 0)]  # frame 0 has no pothole of its own
        area = int(mask.sum())
        assert 0 < area <= 600  # one pasted pothole, at most as large as the largest donor (never enlarged)
        # the donor's bright pixels (120 or 200 on the frame's 40) came with its mask; the colour
        # augmentations shift both alike, so compare them inside one sample
        inside, outside = image[0][mask[0] > 0], image[0][mask[0] == 0]
        assert inside.mean() > outside.mean() + 0.2
        got.append(area)
        again_image, again_mask = dataset[(pass_, 0)]
        assert torch.equal(image, again_image) and torch.equal(mask, again_mask)  # a function of (seed, pass, index)
    assert len(set(got)) > 1  # donors and scales vary from pass to pass
    assert np.array_equal(images, cache[0]) and np.array_equal(masks, cache[1])  # the cached arrays are untouched


def test_copy_paste_never_pastes_a_frame_into_itself_and_cuts_only_its_component():
    import cv2

    images, masks = frames(n=2)
    masks[1] = 0
    masks[1, 10:30, 20:25] = masks[1, 10:15, 20:50] = 1  # an L, whose box also holds...
    masks[1, 20:30, 40:50] = 1  # ...a second pothole
    bank = PatchBank(images, masks, (96, 128))
    assert len(bank) == 2
    assert bank.draw(seed=1, pass_=0, index=1) == []  # the only donor is the frame itself
    cut = bank.draw(seed=1, pass_=0, index=0)[0]["mask"]
    box = masks[1, 10:30, 20:50].copy()
    size = (cut.shape[1], cut.shape[0])
    with_square = cv2.resize(box, size, interpolation=cv2.INTER_NEAREST)
    box[10:, 20:] = 0  # the square, in box coordinates
    assert np.array_equal(cut, cv2.resize(box, size, interpolation=cv2.INTER_NEAREST))
    assert not np.array_equal(cut, with_square)  # the L only, not the square in its box


def test_copy_paste_is_pasted_inside_the_crop_and_absent_unless_asked_for():
    images, masks = frames(h=256, w=256)
    dataset = pasting(images, masks, crop=64)
    assert all(int(dataset[(p, 0)][1].sum()) > 0 for p in range(8))  # frame 0 is empty: each crop got one
    assert not any(isinstance(t, A.OverlayElements) for t in augment.train_transform(3, 64, 0.5).transforms)


def test_pothole_weights_grow_as_the_pothole_shrinks_up_to_one_plus_extra():
    target = torch.zeros(2, 1, 64, 64)
    target[0, 0, 0:4, 0:4] = 1  # 16 px: at most the 64 px reference
    target[0, 0, 20:36, 20:36] = 1  # 256 px: 4x the reference -> half the extra
    weights = losses.pothole_weights(target, extra=3.0)
    assert weights[0, 0, 1, 1] == pytest.approx(4.0)
    assert weights[0, 0, 25, 25] == pytest.approx(1 + 3.0 * 0.5)
    assert torch.equal(weights[0, 0, 50:], torch.ones(14, 64)) and torch.equal(weights[1], torch.ones(1, 64, 64))


def test_small_pothole_weight_raises_the_cost_of_missing_a_small_pothole_beside_a_large_one():
    truth = torch.zeros(1, 1, 64, 64)
    truth[0, 0, 0:4, 0:4] = 1  # small, missed
    truth[0, 0, 20:52, 20:52] = 1  # large (1,024 px), found
    logits = torch.where(truth > 0, 20.0, -20.0)
    logits[0, 0, 0:4, 0:4] = -20.0
    plain = losses.criterion(resolve_config("unetpp", "smoke", loss="image_dice_focal"))
    off = losses.small_pothole_weighted_loss(logits, truth, extra=0.0, focal_weight=0.6, gamma=2.0)
    assert off == pytest.approx(plain(logits, truth).item(), rel=1e-6)  # weight 0 is the plain loss
    weighted = losses.criterion(resolve_config("unetpp", "smoke", loss="image_dice_focal", small_pothole_weight=3.0))
    assert weighted(logits, truth) > 2.5 * plain(logits, truth)  # the missed pixels weigh 4, the found ones 1.75


def test_small_pothole_options_are_checked_by_name():
    with pytest.raises(Exception, match=r"copy_paste must be a share from 0 to 1 .* got 1.5"):
        resolve_config("unetpp", "cpu", copy_paste=1.5, precision="fp32")
    with pytest.raises(Exception, match=r"small_pothole_weight must be >= 0 .* got -1"):
        resolve_config("unetpp", "cpu", small_pothole_weight=-1.0, precision="fp32")
    with pytest.raises(Exception, match=r"small_pothole_weight weighs the pixels of loss 'image_dice_focal'; "
                                        r"loss is 'dice_focal'"):
        resolve_config("unetpp", "smoke", small_pothole_weight=2.0)


def test_both_options_reach_training_and_are_logged(tracking_store, synth_data):
    tracking.configure()
    client, runs = MlflowClient(), {}
    for name, options in (("base", {}), ("both", {"copy_paste": 1.0, "small_pothole_weight": 3.0})):
        config = resolve_config("deeplab", "smoke", loss="image_dice_focal", steps=4, seed=5, **options)
        runs[name] = run_train(config, str(synth_data), progress=False)["run_id"]
    params = client.get_run(runs["both"]).data.params
    assert (params["config.copy_paste"], params["config.small_pothole_weight"]) == ("1.0", "3.0")
    base, both = ([m.value for m in client.get_metric_history(runs[n], "train_loss")] for n in ("base", "both"))
    assert len(base) == len(both) == 2 and base != both
