import shutil

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import artifacts

from potholes.data.dataset import (
    DatasetError,
    file_number,
    find_dataset,
    read_image,
    read_mask,
)
from potholes.inference.postprocess import rle_decode
from potholes.stages.predict import (
    PredictConfig,
    predict_images,
    run_predict,
    submission_order,
)
from potholes.stages.predict_outputs import AtomicCsv, ImageScores, write_csv_atomically


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_submission_follows_sample_order_and_scores_test_masks(in_smoke_store, tmp_path):
    output = tmp_path / "out" / "submission.csv"
    result = run_predict(str(in_smoke_store.data), PredictConfig(output=str(output)), progress=False)
    sample = pd.read_csv(in_smoke_store.data / "sample_submission.csv")
    written = pd.read_csv(output, keep_default_na=False)
    assert list(written.columns) == ["ImageId", "rle"]
    assert written["ImageId"].tolist() == sample["ImageId"].tolist()
    assert sorted(written["ImageId"]) != written["ImageId"].tolist()  # the order is the sample's, not sorted
    run = mlflow.search_runs(filter_string="tags.`potholes.stage` = 'predict'", search_all_experiments=True,
                             output_format="list")[0]
    assert 0 <= run.data.metrics["test_dice"] <= 1 and run.data.metrics["test_dice"] == pytest.approx(result["test_dice"])
    assert {"submission.csv", "submission.potholes.csv", "test_scores.csv",
            "tables/test_images.json"} <= artifacts(run.info.run_id)


def test_potholes_csv_lists_each_component_of_each_submitted_mask(in_smoke_store, tmp_path):
    from potholes.inference.potholes import CSV_COLUMNS

    output = tmp_path / "out" / "submission.csv"
    result = run_predict(str(in_smoke_store.data), PredictConfig(output=str(output)), progress=False)
    potholes = pd.read_csv(tmp_path / "out" / "submission.potholes.csv")
    assert result["potholes_csv"] == str(tmp_path / "out" / "submission.potholes.csv")
    assert result["potholes"] == len(potholes)
    assert list(potholes.columns) == CSV_COLUMNS and len(potholes) > 0
    assert not list((tmp_path / "out").glob(".*.tmp"))
    written = pd.read_csv(output, keep_default_na=False)
    for row in written.itertuples():
        height, width = read_image(in_smoke_store.data / "test" / "images" / row.ImageId).shape[:2]
        mask = rle_decode(row.rle, (height, width))
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        mine = potholes[potholes["ImageId"] == row.ImageId]
        assert mine["id"].tolist() == list(range(1, count))  # every component, nothing else
        assert mine["area_pixels"].sum() == mask.sum()
        for p in mine.itertuples():
            component = labels == p.id
            ys, xs = np.nonzero(component)
            assert [p.bbox_x, p.bbox_y, p.bbox_w, p.bbox_h] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert p.area_pixels == component.sum()
            assert p.area_fraction == pytest.approx(p.area_pixels / (height * width), abs=5e-9)  # 8 decimals
            assert 0 < p.mean_probability <= p.max_probability <= 1


def test_odd_image_formats_get_rows_at_their_own_size(in_smoke_store, tmp_path):
    data = copy_dataset(in_smoke_store.data, tmp_path / "data")
    test_dir = data / "test" / "images"
    rgb = read_image(next(test_dir.glob("*.jpg")))
    cv2.imwrite(str(test_dir / "gray_901.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(test_dir / "rgba_902.PNG"), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(test_dir / "wide_903.jpeg"), cv2.resize(rgb, (150, 70))[..., ::-1])
    shutil.rmtree(data / "test" / "mask")
    sample = pd.read_csv(data / "sample_submission.csv")
    extra = pd.DataFrame({"ImageId": ["wide_903.jpeg", "gray_901.png", "rgba_902.PNG"], "rle": ""})
    pd.concat([extra, sample]).to_csv(data / "sample_submission.csv", index=False)
    output = tmp_path / "sub.csv"
    run_predict(str(data), PredictConfig(output=str(output)), progress=False)
    written = pd.read_csv(output, keep_default_na=False).set_index("ImageId")
    assert written.index[:3].tolist() == ["wide_903.jpeg", "gray_901.png", "rgba_902.PNG"]
    assert len(written) == len(sample) + 3
    # an RLE is only valid for its own image size: decoding at 70x150 must succeed
    rle_decode(written.loc["wide_903.jpeg", "rle"], (70, 150))


def test_id_problems_are_reported_together_before_anything_is_written(in_smoke_store, tmp_path):
    data = copy_dataset(in_smoke_store.data, tmp_path / "data")
    images = sorted((data / "test" / "images").iterdir())
    images[0].unlink()  # listed in the sample, no file
    cv2.imwrite(str(data / "test" / "images" / "pothole_999.jpg"), np.zeros((8, 8, 3), np.uint8))  # not listed
    output = tmp_path / "submission.csv"
    with pytest.raises(DatasetError) as err:
        run_predict(str(data), PredictConfig(output=str(output)), progress=False)
    assert images[0].name in str(err.value) and "pothole_999.jpg" in str(err.value)
    assert "no file in test/images" in str(err.value) and "not listed" in str(err.value)
    assert not output.exists()
    assert not list(tmp_path.glob(".submission.csv.*"))


def test_sample_file_problems(tmp_path, synth_data):
    data = copy_dataset(synth_data, tmp_path / "data")
    pd.DataFrame({"Id": ["x"]}).to_csv(data / "sample_submission.csv", index=False)
    with pytest.raises(DatasetError, match="no 'ImageId' column"):
        submission_order(find_dataset(data))
    (data / "sample_submission.csv").unlink()
    with pytest.raises(DatasetError, match="no sample_submission.csv"):
        submission_order(find_dataset(data))


def test_missing_model_gives_a_clear_error(tracking_store, synth_data, tmp_path):
    with pytest.raises(ValueError, match="cannot be loaded"):
        run_predict(str(synth_data), PredictConfig(model_uri="models:/nope@champion", output=str(tmp_path / "s.csv")),
                    progress=False)
    assert not (tmp_path / "s.csv").exists()


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("ImageId,rle\nold,1 1\n")
    with pytest.raises(OSError):
        with AtomicCsv(target, ["ImageId", "rle"]) as out:
            out.write([{"ImageId": "a", "rle": ""}])
            raise OSError("disk full")  # mid-way: rows written to the hidden file, not to the target
    assert target.read_text() == "ImageId,rle\nold,1 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
    write_csv_atomically(pd.DataFrame({"ImageId": ["a"], "rle": ["1 2"]}), target)
    assert target.read_text().splitlines() == ["ImageId,rle", "a,1 2"]


def test_two_predictions_into_one_folder_keep_their_own_pothole_tables(in_smoke_store, tmp_path):
    for name in ("a.csv", "b.csv"):
        run_predict(str(in_smoke_store.data), PredictConfig(output=str(tmp_path / name)), progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["a.csv", "a.potholes.csv", "b.csv", "b.potholes.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.potholes.csv"), pd.read_csv(tmp_path / "b.potholes.csv"))


class CountingPredictor:
    batch_size = 2

    def __init__(self):
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        return [(np.zeros(image.shape[:2], np.uint8), []) for image in images]


def test_predict_streams_one_batch_at_a_time(synth_data):
    """Rows come out while later batches are not yet predicted: nothing holds every mask."""
    order = submission_order(find_dataset(synth_data))
    predictor = CountingPredictor()
    rows = predict_images(predictor, order, progress=False)
    next(rows)
    assert predictor.calls == 1 and len(order) > 2 * predictor.batch_size
    assert len(list(rows)) == len(order) - 1 and predictor.calls == -(-len(order) // 2)


def test_test_scores_keep_numbers_for_every_image_and_masks_of_the_worst_only(synth_data):
    layout = find_dataset(synth_data)
    order = submission_order(layout)
    scores = ImageScores(layout, worst=2)
    truth = {image_id: read_mask(p) for image_id, p in
             zip([i for i, _ in order], [layout.test_masks / f"mask_{file_number(p)}.png" for _, p in order])}
    for k, (image_id, path) in enumerate(order):  # predictions of falling quality: the last two are the worst
        pred = truth[image_id].copy()
        pred[: k * 4] = 1 - pred[: k * 4]
        scores.add(image_id, path, lambda pred=pred: pred, potholes=k)
    frame = scores.frame()
    assert frame["ImageId"].tolist() == [i for i, _ in order]
    assert frame["predicted_potholes"].tolist() == list(range(len(order)))
    assert frame["true_potholes"].tolist() == [cv2.connectedComponents(truth[i], connectivity=8)[0] - 1
                                               for i, _ in order]
    worst = frame.nsmallest(2, "dice")["ImageId"].tolist()
    assert sorted(scores.worst_masks()) == sorted(worst)
def test_batched_predictions_equal_one_at_a_time(in_smoke_store):
    """Batching (and mixing image sizes in a batch) must not change any mask."""
    predictor = mlflow.pyfunc.load_model("models:/pothole-ensemble@champion").unwrap_python_model().predictor
    images = [read_image(p) for p in sorted((in_smoke_store.data / "test" / "images").iterdir())]
    images.append(cv2.resize(images[0], (120, 80)))
    predictor.batch_size = 4
    together = predictor.predict_masks(images)
    predictor.batch_size = 1
    alone = predictor.predict_masks(images)
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)


def test_request_images_are_checked_before_decoding():
    import base64

    from PIL import Image

    from potholes.serving.requests import MAX_IMAGE_PIXELS, decode_base64_image

    def png(width, height):
        import io

        buffer = io.BytesIO()
        Image.new("L", (width, height)).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    assert decode_base64_image(png(5, 4), 0).shape == (4, 5, 3)
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    with pytest.raises(DatasetError, match="over the limit"):
        decode_base64_image(png(side, side), 3)
    with pytest.raises(DatasetError, match="row 1 of column 'image': not valid base64"):
        decode_base64_image("@@@", 1)
    with pytest.raises(DatasetError, match="expected a base64-encoded"):
        decode_base64_image(None, 2)
