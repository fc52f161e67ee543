"""Photos keep their aspect ratio at model size: the shapes, the resizes, and the predictor that
feeds the networks (issue 23, point 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor
from potholes.inference.geometry import canvas_hw, fit_pair, model_hw


@pytest.mark.parametrize("photo, size, expected", [
    ((640, 640), 256, (256, 256)),  # the dev set: exactly the square it always had
    ((383, 640), 256, (192, 320)),  # the close-up camera, not squashed 1.6x vertically
    ((400, 640), 256, (192, 320)),
    ((3024, 4032), 256, (224, 288)),  # a landscape phone photo
    ((4032, 3024), 256, (288, 224)),  # the same photo held upright
    ((720, 1280), 320, (256, 416)),
])
def test_model_shape_keeps_the_photo_aspect_in_about_the_pixel_budget(photo, size, expected):
    h, w = model_hw(photo, size)
    assert (h, w) == expected
    assert h % 32 == 0 and w % 32 == 0
    assert abs(np.log((w / h) / (photo[1] / photo[0]))) < np.log(1 + 32 / min(h, w))
    assert 0.75 < h * w / size ** 2 < 1.25
    assert model_hw(photo, size, keep_aspect=False) == (size, size)  # models trained before squash


def test_a_model_shape_maps_to_itself_so_cached_splits_keep_their_shape():
    for size in range(64, 1025, 32):
        for h in range(50, 4000, 97):
            for aspect in (0.25, 0.5, 0.6, 0.75, 1.0, 1.33, 1.6, 1.67, 2.0, 4.0):
                shape = model_hw((h, max(1, round(h * aspect))), size)
                assert model_hw(shape, size) == shape, (size, h, aspect)


def test_canvas_is_the_model_shape_of_the_most_common_photo():
    assert canvas_hw([(383, 640)] * 5 + [(640, 640)] * 2, 256) == (192, 320)
    assert canvas_hw([(383, 640)] * 5, 256, keep_aspect=False) == (256, 256)


def test_fit_resizes_photos_of_the_canvas_aspect_and_pads_others_with_their_aspect_kept():
    image = np.full((383, 640, 3), 200, np.uint8)
    mask = np.zeros((383, 640), np.uint8)
    mask[100:200, 300:400] = 255
    small, small_mask = fit_pair(image, mask, (192, 320))
    assert small.shape == (192, 320, 3) and (small == 200).all()  # straight resize, no border
    assert set(np.unique(small_mask)) == {0, 255}  # nearest: the mask stays binary

    upright = np.full((640, 383, 3), 200, np.uint8)
    fitted, fitted_mask = fit_pair(upright, np.full((640, 383), 255, np.uint8), (192, 320))
    content = np.argwhere(fitted[..., 0] == 200)
    (top, left), (bottom, right) = content.min(axis=0), content.max(axis=0) + 1
    assert (top, left, bottom) == (0, 0, 192)
    assert (bottom - top) / (right - left) == pytest.approx(640 / 383, rel=0.02)  # not squashed
    assert (fitted[:, right:] == 0).all() and (fitted_mask[:, right:] == 0).all()  # a pothole-free border


class ShapeSpy(torch.nn.Module):
    """A network that records the input shapes it is given and answers zero logits."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 1, *x.shape[2:]) + self.weight


def spy_predictor(keep_aspect: bool) -> tuple[EnsemblePredictor, ShapeSpy]:
    spy = ShapeSpy()
    member = {"arch": "deeplab", "img_size": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "keep_aspect": keep_aspect}
    config = EnsembleConfig(img_size=256, keep_aspect=keep_aspect, members={"deeplab": member})
    return EnsemblePredictor({"deeplab": spy}, config, batch_size=4, runtime="torch"), spy


def test_the_predictor_feeds_each_photo_at_its_own_aspect_and_answers_at_its_own_size():
    predictor, spy = spy_predictor(keep_aspect=True)
    photos = [np.zeros((383, 640, 3), np.uint8), np.zeros((640, 640, 3), np.uint8), np.zeros((385, 640, 3), np.uint8)]
    masks = predictor.predict_masks(photos)
    # Two shapes in one batch: one forward each (the TTA doubles the batch), wide ones together.
    assert sorted(spy.shapes) == [(2, 3, 256, 256), (4, 3, 192, 320)]
    assert [m.shape for m in masks] == [(383, 640), (640, 640), (385, 640)]
    with pytest.raises(ValueError, match="one model shape"):
        predictor.member_logit_arrays(photos)


def test_models_saved_before_aspect_was_kept_still_squash(tmp_path):
    old = tmp_path / "ensemble.json"
    values = {k: v for k, v in EnsembleConfig(img_size=128).__dict__.items() if k != "keep_aspect"}
    old.write_text(json.dumps(values))
    assert EnsembleConfig.load(old).keep_aspect is False
    predictor, spy = spy_predictor(keep_aspect=False)
    predictor.predict_masks([np.zeros((383, 640, 3), np.uint8)])
    assert spy.shapes == [(2, 3, 256, 256)]
