"""`predict`: the registered ensemble over the test images, written as an RLE submission."""

from __future__ import annotations

import os
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

DEFAULT_MODEL_URI = "models:/pothole-ensemble@champion"


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


def write_csv_atomically(frame: pd.DataFrame, output: Path) -> Path:
    """Write to a temporary file beside ``output`` and rename it: no half-written submission."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        # mkstemp creates 0600; the finished file gets what open() would give: 0666 less the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def predict_submission(predictor, order: list[tuple[str, Path]], batch_size: int | None = None, progress: bool = True):
    """RLE rows, masks and pothole rows (potholes.csv) for every test image, in order.

    The next batch is read and decoded on a helper thread while the networks run on this one
    (OpenCV and torch both release the GIL), so file I/O hides behind inference.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def read(chunk):
        return [read_image(path) for _, path in chunk]

    batch_size = batch_size or predictor.batch_size
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rows, masks, potholes = [], {}, []
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, chunks[0]) if chunks else None
        for index, chunk in enumerate(tqdm(chunks, desc="predict", disable=not progress)):
            images = pending.result()
            if index + 1 < len(chunks):
                pending = reader.submit(read, chunks[index + 1])
            for (image_id, _), (mask, found) in zip(chunk, predictor.predict(images)):
                rows.append({"ImageId": image_id, "rle": pp.rle_encode(mask)})
                masks[image_id] = mask
                potholes.extend(instances.csv_rows(image_id, found))
    return (pd.DataFrame(rows, columns=["ImageId", "rle"]), masks,
            pd.DataFrame(potholes, columns=instances.CSV_COLUMNS))


def score_against_masks(layout: DatasetLayout, order, masks: dict[str, np.ndarray]) -> pd.DataFrame | None:
    """Per-image Dice and IoU when test masks exist (``test/mask``), else None."""
    from potholes.data.dataset import file_number

    if layout.test_masks is None:
        return None
    truth_files = {file_number(p): p for p in list_images(layout.test_masks)}
    records = []
    for image_id, path in order:
        truth_path = truth_files.get(file_number(path))
        if truth_path is None:
            continue
        truth = read_mask(truth_path)
        pred = masks[image_id]
        records.append({"ImageId": image_id, "dice": pp.dice_score(pred, truth), "iou": pp.iou_score(pred, truth),
                        "true_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum()),
                        "true_area_fraction": float(truth.mean()),
                        "image_path": str(path), "mask_path": str(truth_path)})
    return pd.DataFrame(records) if records else None


def worst_overlays(masks, scores: pd.DataFrame, count: int = 8):
    from potholes.reporting import plots

    panels = []
    for row in scores.nsmallest(count, "dice").itertuples():
        image = read_image(Path(row.image_path))
        truth = read_mask(Path(row.mask_path))
        panels.append((f"{row.ImageId} truth", plots.overlay(image, truth, color=(0, 255, 0))))
        panels.append((f"dice {row.dice:.2f} prediction", plots.overlay(image, masks[row.ImageId])))
    return plots.overlay_grid(panels, columns=4)


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

    with tracking.stage_run("predict", run_name="predict"):
        tracking.log_params({"model_uri": config.model_uri, "data_dir": data_dir, "output": config.output,
                           "batch_size": predictor.batch_size, "num_images": len(order),
                           "runtime": config.runtime, "runtime_used": predictor.runtime,
                           **{f"ensemble_{k}": v for k, v in vars(predictor.config).items() if k != "members"}})
        tracking.log_params({"engine": config.engine,
                             **({"spark_master": config.spark_master} if config.engine == "spark" else {})})
        if config.engine == "spark":
            submission, masks, potholes = spark_scoring.spark_submission(
                config.model_uri, layout.test_images, order, config.spark_master, {"runtime": config.runtime})
        else:
            submission, masks, potholes = predict_submission(predictor, order, progress=progress)
        output = write_csv_atomically(submission, Path(config.output))
        potholes_csv = write_csv_atomically(potholes, output.with_name("potholes.csv"))
        mlflow.log_artifact(str(output))
        mlflow.log_artifact(str(potholes_csv))
        result = {"output": str(output), "rows": len(submission), "empty": int((submission["rle"] == "").sum()),
                  "potholes_csv": str(potholes_csv), "potholes": len(potholes), "runtime": predictor.runtime}
        scores = score_against_masks(layout, order, masks)
        if scores is not None:
            result |= {"test_dice": float(scores["dice"].mean()), "test_iou": float(scores["iou"].mean())}
            mlflow.log_metrics({"test_dice": result["test_dice"], "test_iou": result["test_iou"]})
            with tempfile.TemporaryDirectory() as tmp:
                per_image = Path(tmp) / "test_scores.csv"
                scores.to_csv(per_image, index=False)
                mlflow.log_artifact(str(per_image))
            tracking.log_figure(worst_overlays(masks, scores), "plots/worst_test_images.png")
            by_size = size_buckets.summarize(scores["dice"], scores["true_area_fraction"], "test")
            mlflow.log_metrics(by_size)
            result |= by_size
            tracking.log_figure(size_buckets.figure(scores["dice"], scores["true_area_fraction"], "test Dice by pothole size"),
                                "plots/test_dice_by_size.png")
        mlflow.log_metrics({"rows": result["rows"], "empty_masks": result["empty"], "potholes": result["potholes"]})
    print(f"wrote {result['rows']} rows to {output} ({result['empty']} empty masks), {result['potholes']} potholes "
          f"to {potholes_csv} (runtime {predictor.runtime})"
          + (f"; test Dice {result['test_dice']:.4f}, IoU {result['test_iou']:.4f}" if scores is not None else ""))
    return result
