"""`predict`: the registered ensemble over the test images, written as an RLE submission and a
pothole table, streamed (`potholes.stages.predict_outputs`): memory stays flat in the test set."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from potholes.data.dataset import (
    DatasetError,
    DatasetLayout,
    find_dataset,
    list_images,
    read_image,
    read_mask,
)
from potholes.data.images import unreadable_images
from potholes.errors import ConfigError
from potholes.inference import postprocess as pp
from potholes.inference import potholes as instances
from potholes.reporting import size_buckets
from potholes.scale import (
    spark as spark_scoring,  # imports no pyspark until --engine spark runs
)
from potholes.stages.predict_outputs import AtomicCsv, ImageScores, potholes_path

DEFAULT_MODEL_URI = "models:/pothole-ensemble@champion"
TEST_DATASET = "potholes-test"


@dataclass(frozen=True)
class PredictConfig:
    model_uri: str = DEFAULT_MODEL_URI
    output: str = "submission.csv"
    batch_size: int | None = None  # None: the device's default (2 on CPU, 16 on CUDA)
    runtime: str = "auto"  # auto | onnx | openvino | torch (see potholes.inference.runtime)
    engine: str = "local"  # local | spark (potholes.scale.spark)
    spark_master: str = "local[*]"


def submission_order(layout: DatasetLayout) -> list[tuple[str, Path]]:
    """(ImageId, file) in sample_submission order; every problem is reported before any work."""
    if layout.test_images is None:
        raise DatasetError(f"no test/images folder under '{layout.root}'")
    if layout.sample_submission is None:
        raise DatasetError(f"no sample_submission.csv in '{layout.root}' (it fixes the row order)")
    sample = pd.read_csv(layout.sample_submission, dtype=str, keep_default_na=False)
    if "ImageId" not in sample.columns:
        raise DatasetError(f"'{layout.sample_submission}' has no 'ImageId' column (columns: {list(sample.columns)})")
    files = {p.name: p for p in list_images(layout.test_images)}
    ids = sample["ImageId"].tolist()
    problems = []
    duplicated = sorted(set(i for i in ids if ids.count(i) > 1))
    if duplicated:
        problems.append(f"sample_submission.csv lists these ImageIds more than once: {duplicated}")
    missing = [i for i in ids if i not in files]
    if missing:
        problems.append(f"ImageIds in sample_submission.csv with no file in test/images: {missing}")
    extra = sorted(set(files) - set(ids))
    if extra:
        problems.append(f"test images not listed in sample_submission.csv: {extra}")
    problems += [f"test/images/{path.name}: {reason}" for path, reason in
                 unreadable_images([files[i] for i in dict.fromkeys(ids) if i in files]).items()]
    if problems:
        raise DatasetError(problems, layout.root)
    return [(image_id, files[image_id]) for image_id in ids]


def predict_images(predictor, order: list[tuple[str, Path]], batch_size: int | None = None, progress: bool = True):
    """(ImageId, file, mask, potholes) for every test image, in order, one batch in memory at a time.

    The next batch is read and decoded on a helper thread while the networks run on this one
    (OpenCV and torch both release the GIL), so file I/O hides behind inference.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def read(chunk):
        return [read_image(path) for _, path in chunk]

    batch_size = batch_size or predictor.batch_size
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, chunks[0]) if chunks else None
        for index, chunk in enumerate(tqdm(chunks, desc="predict", disable=not progress)):
            images = pending.result()
            if index + 1 < len(chunks):
                pending = reader.submit(read, chunks[index + 1])
            for (image_id, path), (mask, found) in zip(chunk, predictor.predict(images)):
                yield image_id, path, mask, found


def local_rows(predictor, order, progress: bool = True):
    """`predict_images` as (ImageId, file, rle, mask thunk, potholes): the rows the writers take."""
    for image_id, path, mask, found in predict_images(predictor, order, progress=progress):
        yield image_id, path, pp.rle_encode(mask), (lambda mask=mask: mask), found


def spark_rows(config: PredictConfig, layout: DatasetLayout, order):
    """The Spark engine's rows in submission order, each RLE decoded only if it is scored."""
    paths = dict(order)
    for image_id, rle, shape, found in spark_scoring.stream_submission(
            config.model_uri, layout.test_images, [i for i, _ in order], config.spark_master,
            {"runtime": config.runtime}):
        yield image_id, paths[image_id], rle, (lambda rle=rle, shape=shape: pp.rle_decode(rle, shape)), found


TABLE_COLUMNS = ["ImageId", "dice", "iou", "true_pixels", "predicted_pixels", "true_area_fraction", "size_bucket",
                 "true_potholes", "predicted_potholes"]


def test_frame(layout: DatasetLayout, order, masks: dict[str, Path]) -> pd.DataFrame:
    """The test images (and their masks, by file number as `ImageScores.truth` maps them) as a
    dataset table; its digest follows the files' bytes, so the model's page tells one test set
    from another."""
    from potholes.data.dataset import file_number
    from potholes.data.fingerprint import files_digest

    frame = pd.DataFrame({"ImageId": [i for i, _ in order],
                          "image_path": [p.relative_to(layout.root).as_posix() for _, p in order],
                          "mask_path": [masks[file_number(p)].relative_to(layout.root).as_posix()
                                        if file_number(p) in masks else "" for _, p in order]})
    frame["files_digest"] = files_digest(layout.root, [f for f in (layout.test_images, layout.test_masks) if f])
    return frame


def log_worst_images(masks: dict[str, np.ndarray], scores: pd.DataFrame, count: int = 8) -> None:
    """The lowest-Dice test images in the image grid, outlined, ranked and scored in the key."""
    import mlflow

    from potholes.reporting import previews

    for rank, row in enumerate(scores.nsmallest(count, "dice").itertuples(), start=1):
        panel = previews.outline(read_image(Path(row.image_path)), read_mask(Path(row.mask_path)), masks[row.ImageId])
        mlflow.log_image(panel, key=f"{previews.key(f'test_worst/{rank:02d}', row.image_path)} dice {row.dice:.3f}",
                         step=0, synchronous=True)


def run_predict(data_dir: str, config: PredictConfig = PredictConfig(), progress: bool = True) -> dict:
    import mlflow

    from potholes.tracking import runs as tracking

    layout = find_dataset(data_dir)
    order = submission_order(layout)  # all id problems surface before the model loads
    if spark_scoring.check_engine(config.engine) == "spark":
        spark_scoring.preflight(config.spark_master)  # master, pyspark and Java: before the model loads or a run
    try:
        model = mlflow.pyfunc.load_model(config.model_uri)
    except Exception as exc:
        raise ConfigError(f"model_uri '{config.model_uri}' cannot be loaded ({exc}); run the tune entry point "
                         "first, or pass a registered version such as models:/pothole-ensemble/1") from exc
    predictor = model.unwrap_python_model().predictor
    if config.batch_size:
        predictor.batch_size = config.batch_size
    predictor.runtime = predictor.runtime_for(config.runtime)  # 'onnx' without graphs fails here, before the run

    with tracking.stage_run("predict", run_name="predict", log_system_metrics=True):
        tracking.log_params({"model_uri": config.model_uri, "data_dir": data_dir, "output": config.output,
                           "batch_size": predictor.batch_size, "num_images": len(order),
                           "runtime": config.runtime, "runtime_used": predictor.runtime,
                           **{f"ensemble_{k}": v for k, v in vars(predictor.config).items() if k != "members"}})
        tracking.log_params({"engine": config.engine,
                             **({"spark_master": config.spark_master} if config.engine == "spark" else {})})
        rows = spark_rows(config, layout, order) if config.engine == "spark" else local_rows(predictor, order, progress)
        output, potholes_csv = Path(config.output), potholes_path(Path(config.output))
        scores = ImageScores(layout)
        empty = 0
        # Rows go to disk as they come; both files appear only when every image is done.
        with AtomicCsv(output, ["ImageId", "rle"]) as submission, \
                AtomicCsv(potholes_csv, instances.CSV_COLUMNS) as table:
            for image_id, path, rle, mask, found in rows:
                submission.write([{"ImageId": image_id, "rle": rle}])
                table.write(instances.csv_rows(image_id, found))
                scores.add(image_id, path, mask, len(found))
                empty += rle == ""
        mlflow.log_artifact(str(output))
        mlflow.log_artifact(str(potholes_csv))
        result = {"output": str(output), "rows": submission.rows, "empty": empty,
                  "potholes_csv": str(potholes_csv), "potholes": table.rows, "runtime": predictor.runtime}
        # The test metrics belong to the model that was scored and the data it was scored on: the
        # ensemble's LoggedModel page shows them with the test set's dataset.
        model_id = getattr(model, "model_id", None)
        test_set = tracking.pandas_dataset(test_frame(layout, order, scores.truth), layout.test_images,
                                            TEST_DATASET)
        per_image = scores.frame()
        tracking.log_input(test_set, "evaluation" if per_image is not None else "inference", model_id)
        if per_image is not None:
            result |= {"test_dice": float(per_image["dice"].mean()), "test_iou": float(per_image["iou"].mean())}
            by_size = size_buckets.summarize(per_image["dice"], per_image["true_area_fraction"], "test")
            tracking.log_metrics({"test_dice": result["test_dice"], "test_iou": result["test_iou"], **by_size},
                                 model_id=model_id, dataset=test_set)
            result |= by_size
            with tempfile.TemporaryDirectory() as tmp:
                per_image.to_csv(Path(tmp) / "test_scores.csv", index=False)
                mlflow.log_artifact(str(Path(tmp) / "test_scores.csv"))
            mlflow.log_table(per_image[TABLE_COLUMNS], "tables/test_images.json")
            log_worst_images(scores.worst_masks(), per_image)
            tracking.log_figure(size_buckets.figure(per_image["dice"], per_image["true_area_fraction"],
                                                    "test Dice by pothole size"), "plots/test_dice_by_size.png")
        mlflow.log_metrics({"rows": result["rows"], "empty_masks": result["empty"], "potholes": result["potholes"]})
    print(f"wrote {result['rows']} rows to {output} ({result['empty']} empty masks), {result['potholes']} potholes "
          f"to {potholes_csv} (runtime {predictor.runtime})"
          + (f"; test Dice {result['test_dice']:.4f}, IoU {result['test_iou']:.4f}" if per_image is not None else ""))
    return result
