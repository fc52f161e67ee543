"""Tiled inference (issue 23, point 2): windows that cover a side, blend weights that sum to one,
and tiled logits equal to whole-image logits for a network that sees no further than the margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potholes.errors import ConfigError
from potholes.inference import tiling
from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor


@pytest.mark.parametrize("tile_size", [64, 128, 512])
@pytest.mark.parametrize("overlap", [0, 32])
def test_windows_cover_each_side_with_the_fewest_equal_windows(tile_size, overlap):
    for length in range(32, 1600, 32):
        size, starts = tiling.windows(length, tile_size, overlap)
        assert starts[0] == 0 and starts[-1] + size == length, (length, size, starts)
        assert size <= min(tile_size, length) and (size % 32 == 0 or size == length)
        shared = [a + size - b for a, b in zip(starts, starts[1:])]
        assert all(s >= overlap for s in shared), (length, size, starts)
        # one window fewer, even at full tile size, would not cover the side
        assert len(starts) == 1 or (len(starts) - 2) * (tile_size - overlap) + tile_size < length


def test_blend_weights_of_overlapping_windows_sum_to_one():
    for length, tile_size, overlap in [(640, 256, 64), (1024, 512, 64), (352, 128, 32), (96, 64, 32)]:
        size, starts = tiling.windows(length, tile_size, overlap)
        total = np.zeros(length)
        for start, weight in zip(starts, tiling.axis_weights(length, size, starts)):
            total[start:start + size] += weight
        np.testing.assert_allclose(total, 1.0, atol=1e-12, err_msg=str((length, tile_size, overlap)))


def local_net(seed: int = 0) -> torch.nn.Module:
    """Three 3x3 convolutions: each output pixel sees 3 pixels around it, and zero padding."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 1, 3, padding=1)).eval()


def forward_of(net: torch.nn.Module, calls: list | None = None):
    @torch.inference_mode()
    def forward(batch: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(batch.shape)
        return net(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    return forward


def test_tiled_logits_equal_whole_image_logits_for_a_network_that_sees_within_the_margin():
    images = np.random.default_rng(1).integers(0, 256, (3, 96, 352, 3), dtype=np.uint8)
    net = local_net()
    whole = forward_of(net)(images)
    calls = []
    tiled = tiling.run_tiled(forward_of(net, calls), images, tile_size=128, overlap=32, batch_size=4)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    assert {shape[1:3] for shape in calls} == {(96, 128)} and len(calls) > 1  # windows, never the whole
    # Windows that only touch (384 = 3 x 128, no overlap) show their own zero padding at their
    # inner edges: the shared margin is what hides it.
    wide = np.concatenate([images, images[:, :, :32]], axis=2)
    seams = tiling.run_tiled(forward_of(net), wide, tile_size=128, overlap=0, batch_size=4)
    assert np.abs(seams - forward_of(net)(wide)).max() > 1e-3


def test_an_image_that_fits_a_tile_runs_whole():
    images = np.random.default_rng(2).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    calls = []
    out = tiling.run_tiled(forward_of(local_net(), calls), images, tile_size=128, overlap=32, batch_size=1)
    assert calls == [images.shape]
    np.testing.assert_array_equal(out, forward_of(local_net())(images))


class LocalMember(torch.nn.Module):
    """`local_net` as an ensemble member, recording the input shapes it is given."""

    def __init__(self):
        super().__init__()
        self.net = local_net()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def member_predictor(tile_size: int) -> tuple[EnsemblePredictor, LocalMember]:
    member = LocalMember()
    config = {"arch": "deeplab", "img_size": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "keep_aspect": True}
    ensemble = EnsembleConfig(img_size=256, members={"deeplab": config}, tile_size=tile_size, tile_overlap=64)
    return EnsemblePredictor({"deeplab": member}, ensemble, batch_size=4, runtime="torch"), member


def test_the_predictor_tiles_members_larger_than_a_tile_and_answers_at_the_photos_size():
    photos = [np.random.default_rng(3).integers(0, 256, (383, 640, 3), dtype=np.uint8)]
    whole_predictor, whole_member = member_predictor(tile_size=512)
    tiled_predictor, tiled_member = member_predictor(tile_size=128)
    whole = whole_predictor.member_logits(photos)["deeplab"][0]
    tiled = tiled_predictor.member_logits(photos)["deeplab"][0]
    assert whole_member.shapes == [(2, 3, 192, 320)]  # the presets' size: whole, never tiled
    assert {shape[2:] for shape in tiled_member.shapes} == {(128, 128)}
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)  # the flip TTA keeps the network local
    assert tiled_predictor.predict_masks(photos)[0].shape == (383, 640)


def test_bad_tile_settings_are_named():
    with pytest.raises(ValueError, match=r"tile_size must be a positive multiple of 32, got 100"):
        EnsembleConfig(tile_size=100)
    with pytest.raises(ValueError, match=r"tile_overlap must be an integer from 0 to half of tile_size \(256\), got 300"):
        EnsembleConfig(tile_overlap=300)
    with pytest.raises(ConfigError) as both:  # both at once, one line each
        EnsembleConfig(tile_size=100, tile_overlap=-1)
    assert str(both.value).splitlines() == [
        "2 problems in the tiling parameters:",
        "  - tile_size must be a positive multiple of 32, got 100",
        "  - tile_overlap must be an integer from 0 to half of tile_size, got -1"]
