import numpy as np
import pytest
from seed_way import remove_small_components_seed, rle_encode_scan

from potholes.inference import postprocess as pp


def random_mask(rng, shape=(97, 131), density=0.45, blur=True):
    import cv2

    noise = rng.random(shape).astype(np.float32)
    if blur:
        noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
        return (noise > np.quantile(noise, 1 - density)).astype(np.uint8)
    return (noise < density).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_area", [0, 1, 2, 5, 30, 400])
def test_small_component_removal_equals_the_seed(seed, min_area):
    mask = random_mask(np.random.default_rng(seed), blur=seed % 2 == 0)
    ours = pp.remove_small_components(mask, min_area)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, remove_small_components_seed(mask, min_area))


def test_small_component_removal_uses_8_connectivity():
    mask = np.zeros((5, 5), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one component of 2 px
    assert pp.remove_small_components(mask, 2).sum() == 2
    assert pp.remove_small_components(mask, 3).sum() == 0


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48)])
def test_rle_round_trip_and_seed_compatibility(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in [np.zeros(shape, np.uint8), np.ones(shape, np.uint8), (rng.random(shape) < 0.3).astype(np.uint8)]:
        rle = pp.rle_encode(mask)
        assert rle == rle_encode_scan(mask)
        np.testing.assert_array_equal(pp.rle_decode(rle, shape), mask)


def test_rle_is_column_major_and_one_indexed():
    mask = np.array([[1, 0, 1],
                     [1, 0, 0]], np.uint8)
    assert pp.rle_encode(mask) == "1 2 5 1"
    assert pp.rle_encode(np.zeros((3, 3))) == ""
    assert pp.rle_encode(np.ones((2, 2))) == "1 4"


@pytest.mark.parametrize("bad", ["1", "0 2", "3 -1", "5 10"])
def test_rle_decode_rejects_malformed(bad):
    with pytest.raises(ValueError):
        pp.rle_decode(bad, (3, 3))


def test_dice_and_iou():
    a = np.array([[1, 1, 0, 0]])
    b = np.array([[1, 0, 1, 0]])
    assert pp.dice_score(a, b) == pytest.approx(0.5)
    assert pp.iou_score(a, b) == pytest.approx(1 / 3)
    assert pp.dice_score(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert pp.dice_score(np.zeros((2, 2)), np.ones((2, 2))) == 0.0


def test_probability_to_mask_both_orders():
    prob = np.zeros((8, 8), np.float32)
    prob[2:6, 2:6] = 0.9
    prob[0, 7] = 0.9  # a 1-px speck
    seed_order = pp.probability_to_mask(prob, 0.5, 2, out_hw=(16, 24), resize_first=False)
    ours = pp.probability_to_mask(prob, 0.5, 2, out_hw=(16, 24), resize_first=True)
    assert seed_order.shape == ours.shape == (16, 24)
    assert seed_order[0:2, 21:24].sum() == 0 and ours[0:2, 21:24].sum() == 0  # speck removed either way
    assert seed_order[4:12, 6:18].all() and ours[5:11, 7:17].all()
    np.testing.assert_array_equal(pp.probability_to_mask(prob, 0.5, 2), pp.remove_small_components(prob > 0.5, 2))


def test_scaled_min_area_and_blend():
    assert pp.scaled_min_area(400, 256) == 100
    assert pp.scaled_min_area(100, 512) == 100
    np.testing.assert_allclose(pp.blend_logits(np.array([2.0]), np.array([-2.0]), 0.75), [1.0])


def test_logit_space_threshold_matches_probability_threshold():
    """tune thresholds blended logits at log(t/(1-t)) instead of sigmoid(blend) at t."""
    from potholes.tuning.search import score

    rng = np.random.default_rng(0)
    logits = {"unetpp": rng.normal(0, 3, (5, 32, 32)), "deeplab": rng.normal(0, 3, (5, 32, 32))}
    masks = (rng.random((5, 32, 32)) < 0.3).astype(np.uint8)
    for w, t, area in [(0.3, 0.35, 4), (1.0, 0.45, 0), (0.0, 0.3, 10)]:
        probs = pp.sigmoid(pp.blend_logits(logits["unetpp"], logits["deeplab"], w))
        assert score(logits, masks, w, t, area) == pytest.approx(pp.mean_dice(probs, masks, t, area), abs=1e-12)
