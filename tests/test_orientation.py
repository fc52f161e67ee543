"""Phone photos in display orientation: the EXIF orientation tag is applied wherever an image is
decoded, and a mask is taken as drawn on the displayed photo."""

import base64
import io
import shutil

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from potholes.data.dataset import build_manifest, read_image
from potholes.data.images import apply_orientation, decode_image, read_mask
from potholes.inference.postprocess import rle_decode
from potholes.stages.predict import PredictConfig, run_predict
from potholes.training.loader import load_split

# Stored pixels -> displayed image for orientation 6 (the usual portrait phone photo): a
# 90-degree clockwise turn, so the stored array is the displayed one turned counter-clockwise.
PORTRAIT = 6


def jpeg_with_orientation(display_rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose stored pixels need ``orientation`` to show ``display_rgb``."""
    inverse = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]  # the turn that undoes it
    stored = apply_orientation(display_rgb, inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=98, exif=exif)
    return buffer.getvalue()


def scene(height: int = 96, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A non-square photo with one dark pothole near its top: easy to tell from its turned self."""
    image = np.full((height, width, 3), 170, np.uint8)
    image[:, : width // 4] = (90, 120, 200)  # a blue stripe on the left
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 5), height // 8, 1, -1)
    image[mask == 1] = 30
    return image, mask


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_as_pillow_does(orientation):
    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), expected)


def test_a_portrait_phone_photo_pairs_and_trains_in_display_orientation(tmp_path, synth_data):
    display, mask = scene()
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "train" / "images" / "pothole_900.jpg").write_bytes(jpeg_with_orientation(display, PORTRAIT))
    cv2.imwrite(str(data / "train" / "mask" / "mask_900.png"), mask * 255)  # drawn on the displayed photo
    stored = np.asarray(Image.open(data / "train" / "images" / "pothole_900.jpg"))
    assert stored.shape[:2] == (64, 96)  # the file itself is landscape

    assert read_image(data / "train" / "images" / "pothole_900.jpg").shape[:2] == (96, 64)
    prepared = build_manifest(str(data), 0.15, 42, progress=False)  # no "size mismatch"
    row = prepared.manifest.set_index("image_path").loc["train/images/pothole_900.jpg"]
    assert (row["height"], row["width"]) == (96, 64) and row["pothole_pixels"] == mask.sum()

    manifest = prepared.manifest[prepared.manifest["image_path"] == "train/images/pothole_900.jpg"]
    images, masks = load_split(prepared.layout.root, manifest, row["split"], 64, progress=False)
    dark = images[0][masks[0] == 1].mean()
    road = (masks[0] == 0) & (images[0].max(axis=-1) > 0)  # not the black border of a fitted photo
    assert dark < 60 and images[0][road].mean() > 120  # the mask lies on the pothole
    np.testing.assert_array_equal(read_mask(data / "train" / "mask" / "mask_900.png"), mask)


def test_predict_and_serving_answer_in_display_orientation(in_smoke_store, tmp_path):
    display, _ = scene(96, 64)
    photo = jpeg_with_orientation(display, PORTRAIT)
    data = tmp_path / "data"
    shutil.copytree(in_smoke_store.data, data)
    shutil.rmtree(data / "test" / "mask")
    (data / "test" / "images" / "phone_950.jpg").write_bytes(photo)
    sample = pd.read_csv(data / "sample_submission.csv")
    pd.concat([pd.DataFrame({"ImageId": ["phone_950.jpg"], "rle": [""]}), sample]).to_csv(
        data / "sample_submission.csv", index=False)
    output = tmp_path / "submission.csv"
    run_predict(str(data), PredictConfig(output=str(output)), progress=False)
    written = pd.read_csv(output, keep_default_na=False).set_index("ImageId")
    rle_decode(written.loc["phone_950.jpg", "rle"], (96, 64))  # valid only at the displayed size

    model = mlflow.pyfunc.load_model(in_smoke_store.tune["model_uri"])
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(photo).decode("ascii")]}))
    assert (answer.loc[0, "height"], answer.loc[0, "width"]) == (96, 64)
    rle_decode(answer.loc[0, "rle"], (96, 64))
