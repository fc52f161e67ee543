from pathlib import Path

import cv2
import numpy as np
import pytest

from potholes.data import dataset as data
from potholes.data.dataset import DatasetError


def write_pair(root: Path, number, image=None, mask=None, image_name=None, mask_name=None, size=(32, 40)):
    h, w = size
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "train" / "mask").mkdir(parents=True, exist_ok=True)
    if image is None:
        image = np.full((h, w, 3), 100, np.uint8)
    if mask is None:
        mask = np.zeros((h, w), np.uint8)
        mask[4:12, 4:14] = 255
    cv2.imwrite(str(root / "train" / "images" / (image_name or f"pothole_{number}.jpg")), image)
    cv2.imwrite(str(root / "train" / "mask" / (mask_name or f"mask_{number}.png")), mask)


def test_find_dataset_accepts_competition_nesting_and_masks_dir(tmp_path):
    nested = tmp_path / "dataset" / "dataset"
    write_pair(nested, 1)
    (nested / "train" / "mask").rename(nested / "train" / "masks")
    layout = data.find_dataset(tmp_path)
    assert layout.root == nested
    assert layout.train_masks.name == "masks"
    assert layout.test_images is None and layout.sample_submission is None


def test_find_dataset_error_says_how_to_get_data(tmp_path):
    with pytest.raises(DatasetError, match="potholes synth"):
        data.find_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        data.find_dataset(tmp_path / "nope")


def test_pairing_by_first_number_any_extension_case(tmp_path):
    write_pair(tmp_path, 3, image_name="pothole_3.JPG")
    write_pair(tmp_path, 10, image_name="img_10_v2.jpeg", mask_name="mask_10.PNG")
    write_pair(tmp_path, 7, mask_name="mask_99.png")  # image 7 and mask 99 stay unpaired
    pairing = data.pair_files(tmp_path / "train" / "images", tmp_path / "train" / "mask")
    assert [p[0] for p in pairing.pairs] == ["3", "10"]
    assert [p.name for p in pairing.images_without_mask] == ["pothole_7.jpg"]
    assert [p.name for p in pairing.masks_without_image] == ["mask_99.png"]


def test_duplicate_numbers_and_unnumbered_files_are_all_reported(tmp_path):
    write_pair(tmp_path, 5)
    write_pair(tmp_path, 5, image_name="pothole_005.png", mask_name="mask_5.png")
    write_pair(tmp_path, 1, image_name="pothole_x.jpg")
    with pytest.raises(DatasetError) as err:
        data.pair_files(tmp_path / "train" / "images", tmp_path / "train" / "mask")
    message = str(err.value)
    assert "'pothole_005.png' and 'pothole_5.jpg'" in message or "'pothole_5.jpg' and 'pothole_005.png'" in message
    assert "pothole_x.jpg" in message and "no number" in message


def test_images_load_as_rgb_uint8_from_gray_rgba_and_16bit(tmp_path):
    gray = np.full((8, 9), 200, np.uint8)
    rgba = np.zeros((8, 9, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    rgba[..., 3] = 10
    deep = np.full((8, 9, 3), 65535, np.uint16)
    for name, array in [("g.png", gray), ("a.png", rgba), ("d.png", deep)]:
        cv2.imwrite(str(tmp_path / name), array)
    g, a, d = (data.read_image(tmp_path / n) for n in ("g.png", "a.png", "d.png"))
    for img in (g, a, d):
        assert img.dtype == np.uint8 and img.shape == (8, 9, 3)
    assert (g == 200).all()
    assert (a[..., 0] == 255).all() and (a[..., 1:] == 0).all()  # RGB order, alpha dropped
    assert (d == 255).all()


def test_mask_binarisation_rule():
    assert data.binarize_mask(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]
    # 0/1 masks are detected instead of turning all-empty (the seed's == 255 rule)
    assert data.binarize_mask(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]
    assert data.binarize_mask(np.array([[0, 127, 128, 255]], np.uint8)).tolist() == [[0, 0, 1, 1]]
    assert data.mask_notes(np.array([[0, 127, 128, 255]], np.uint8)) == [
        ("mask values other than 0/255 (binarised with > 127)", "2 pixel(s) with values other than 0/255")]
    assert data.mask_notes(np.array([[0, 1]], np.uint8))[0][0].startswith("0/1 mask")
    assert data.mask_notes(np.array([[0, 255, 255]], np.uint8)) == []


def test_every_problem_of_a_folder_in_one_report(tmp_path):
    """A corrupt JPEG, a truncated one, two images sharing a number, an unnumbered file, a mask of
    another size, a corrupt mask, an unpaired image and mask, a JPEG mask, a 0/1 mask and a mask
    with grey values: one error lists every file, grouped by kind, with counts."""
    for n in range(1, 12):
        write_pair(tmp_path, n)
    images, masks = tmp_path / "train" / "images", tmp_path / "train" / "mask"
    (images / "pothole_1.jpg").write_bytes(b"not a jpeg at all")
    jpeg = (images / "pothole_2.jpg").read_bytes()
    (images / "pothole_2.jpg").write_bytes(jpeg[:-8])  # a truncated download
    write_pair(tmp_path, 3, image_name="pothole_003.png", mask_name="mask_3.png")
    write_pair(tmp_path, 0, image_name="road.jpg", mask_name="mask_0.png")
    write_pair(tmp_path, 4, mask=np.zeros((20, 20), np.uint8))
    (masks / "mask_5.png").write_bytes(b"\x89PNG broken")
    (masks / "mask_6.png").unlink()
    write_pair(tmp_path, 99, mask_name="mask_99.png")
    (images / "pothole_99.jpg").unlink()
    (masks / "mask_7.png").unlink()
    cv2.imwrite(str(masks / "mask_7.jpg"), np.where(np.arange(40)[None, :].repeat(32, 0) > 20, 255, 0).astype(np.uint8))
    zero_one = np.zeros((32, 40), np.uint8)
    zero_one[2:9, 3:8] = 1
    cv2.imwrite(str(masks / "mask_8.png"), zero_one)
    grey = np.zeros((32, 40), np.uint8)
    grey[4:12, 4:14] = 200
    grey[5, 5] = 90
    cv2.imwrite(str(masks / "mask_9.png"), grey)

    with pytest.raises(DatasetError) as err:
        data.build_manifest(tmp_path, progress=False)
    message = str(err.value)
    assert "6 problem(s) of 4 kind(s)" in message, message
    expected = {
        "unreadable or corrupt image (3):": ["images/pothole_1.jpg", "images/pothole_2.jpg: is not a readable",
                                             "mask/mask_5.png"],
        "two files share a number (1):": ["'pothole_003.png' and 'pothole_3.jpg'"],
        "no number in the file name to pair it by (1):": ["images/road.jpg"],
        "image and mask sizes differ (1):": ["image 'pothole_4.jpg' is 40x32 but mask 'mask_4.png' is 20x20"],
        "image without a mask (skipped) (1):": ["images/pothole_6.jpg"],
        "mask without an image (skipped) (2):": ["mask/mask_0.png", "mask/mask_99.png"],
        "JPEG mask (lossy; binarised with > 127) (1):": ["mask/mask_7.jpg"],
        "0/1 mask (used as is: 1 = pothole) (1):": ["mask/mask_8.png"],
        "mask values other than 0/255 (binarised with > 127) (2):": ["mask/mask_7.jpg", "mask/mask_9.png"],
    }
    for header, files in expected.items():
        assert header in message, (header, message)
        for name in files:
            assert name in message, (name, message)
    assert "and 7 warning(s):" in message
    assert message.index("problem(s)") < message.index("sizes differ") < message.index("warning(s)")


def test_empty_folders_are_reported_together(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "mask").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        data.build_manifest(tmp_path, progress=False)
    message = str(err.value)
    assert "empty folder (2):" in message and "images: no .jpg/.jpeg/.png files" in message
    assert "mask: no .jpg/.jpeg/.png files" in message


def test_several_datasets_under_data_dir_are_listed_not_guessed(tmp_path):
    write_pair(tmp_path / "roads_a", 1)
    write_pair(tmp_path / "roads_b", 1)
    with pytest.raises(DatasetError) as err:
        data.find_dataset(tmp_path)
    assert "holds 2 datasets" in str(err.value)
    assert str(tmp_path / "roads_a") in str(err.value) and str(tmp_path / "roads_b") in str(err.value)
    assert data.find_dataset(tmp_path / "roads_a").root == tmp_path / "roads_a"


def test_scan_collects_corrupt_files_and_size_mismatches_together(tmp_path):
    write_pair(tmp_path, 1)
    write_pair(tmp_path, 2, mask=np.zeros((20, 20), np.uint8))
    write_pair(tmp_path, 3)
    (tmp_path / "train" / "images" / "pothole_3.jpg").write_bytes(b"not a jpeg at all")
    write_pair(tmp_path, 4)
    (tmp_path / "train" / "mask" / "mask_4.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError) as err:
        data.build_manifest(tmp_path, progress=False)
    message = str(err.value)
    assert "3 problem(s) of 2 kind(s)" in message
    assert "pothole_3.jpg" in message and "mask_4.png" in message
    assert "size mismatch: image 'pothole_2.jpg' is 40x32 but mask 'mask_2.png' is 20x20" in message


def test_manifest_measures_masks(tmp_path):
    mask = np.zeros((32, 40), np.uint8)
    mask[0:4, 0:5] = 255  # 20 px
    mask[10:20, 10:20] = 255  # 100 px
    for n in range(1, 8):
        write_pair(tmp_path, n, mask=mask if n != 7 else np.zeros((32, 40), np.uint8))
    prepared = data.build_manifest(tmp_path, val_fraction=0.3, seed=1, progress=False)
    row = prepared.manifest.set_index("id").loc["1"]
    assert row["pothole_pixels"] == 120
    assert row["num_components"] == 2
    assert row["max_component_pixels"] == 100 and row["min_component_pixels"] == 20
    assert row["area_ratio"] == pytest.approx(120 / (32 * 40))
    assert row["image_path"] == "train/images/pothole_1.jpg"
    assert sorted(prepared.component_areas) == [20] * 6 + [100] * 6


def test_split_is_reproducible_and_stratified():
    import pandas as pd

    ratios = [0.0] * 20 + list(np.linspace(0.001, 0.5, 80))
    manifest = pd.DataFrame({"area_ratio": ratios})
    a = data.split_train_val(manifest, 0.15, seed=42)
    b = data.split_train_val(manifest, 0.15, seed=42)
    c = data.split_train_val(manifest, 0.15, seed=7)
    assert (a == b).all() and not (a == c).all()
    assert (a == "val").sum() == 15
    # 20 % empty masks overall -> 3 of the 15 validation images
    assert ((a == "val") & (manifest["area_ratio"] == 0)).sum() == 3


def test_split_of_tiny_dataset_falls_back_gracefully():
    import pandas as pd

    manifest = pd.DataFrame({"area_ratio": [0.0, 0.1, 0.2, 0.3]})
    split = data.split_train_val(manifest, 0.25, seed=0)
    assert (split == "val").sum() == 1
    with pytest.raises(DatasetError, match="too few"):
        data.split_train_val(manifest.iloc[:1], 0.5)
