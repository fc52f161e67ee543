"""Row 11: `predict`'s peak memory against the number of test images. The same registered
ensemble predicts test sets of N and 10×N images (the dataset's test photos repeated under new
names, with their masks, so scoring runs too), each `potholes predict` in a fresh process; the
row is the ratio of their peak RSS. Target: the larger within +10 % of the smaller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import dataset, parser, register_untrained, report

from potholes.data.dataset import file_number, find_dataset, list_images

MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def repeated(source: Path, where: Path, count: int) -> Path:
    """A dataset whose test set is ``count`` images: the source's test photos (and masks) cycled
    under new numbers, as symlinks; train/ points at the source's."""
    layout = find_dataset(source)
    photos = list_images(layout.test_images)
    masks = {file_number(p): p for p in list_images(layout.test_masks)} if layout.test_masks else {}
    (where / "test" / "images").mkdir(parents=True)
    (where / "test" / "mask").mkdir()
    (where / "train").mkdir()
    for part in ("images", "mask"):
        (where / "train" / part).symlink_to((layout.train_images if part == "images" else layout.train_masks).resolve())
    names = []
    for k in range(count):
        photo = photos[k % len(photos)]
        name = f"pothole_{k + 1}{photo.suffix}"
        (where / "test" / "images" / name).symlink_to(photo.resolve())
        if file_number(photo) in masks:
            (where / "test" / "mask" / f"mask_{k + 1}.png").symlink_to(masks[file_number(photo)].resolve())
        names.append(name)
    (where / "sample_submission.csv").write_text("ImageId,rle\n" + "".join(f"{n},\n" for n in names))
    return where


def peak_rss_mb(data: Path, output: Path, env: dict) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one `potholes predict` in a fresh process."""
    command = [sys.executable, "-c", MEASURE, str(Path(sys.executable).parent / "potholes"), "predict",
               "--data-dir", str(data), "--model-uri", "models:/bench-ensemble/1", "--output", str(output)]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    seconds = time.perf_counter() - start
    kilobytes, code = out.stdout.split()[-2:]
    if code != "0":
        raise SystemExit(f"predict failed:\n{out.stderr[-3000:]}")
    return int(kilobytes) / 1024, seconds


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", default="300,3000", help="the two test-set sizes")
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    small, large = (12, 120) if args.quick else (int(n) for n in args.images.split(","))
    img_size = 64 if args.quick else args.img_size
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = dataset(args, tmp, n_test=12)
        uri = register_untrained(tmp, list_images(find_dataset(source).test_images)[0], img_size)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1"}
        measured = {}
        for count in (small, large):
            data = repeated(source, tmp / f"test{count}", count)
            measured[count] = peak_rss_mb(data, tmp / f"out{count}" / "submission.csv", env)
            scored = len(list((data / "test" / "mask").iterdir()))
            print(json.dumps({"images": count, "scored": scored, "peak_rss_mb": measured[count][0],
                              "seconds": measured[count][1]}), flush=True)
    (small_mb, small_s), (large_mb, large_s) = measured[small], measured[large]
    rows = [{"row": "11 predict memory", "img_size": img_size, "small_images": small, "large_images": large,
             "small_peak_rss_mb": small_mb, "large_peak_rss_mb": large_mb, "large_vs_small": large_mb / small_mb,
             "target": "<= 1.10", "small_img_per_s": small / small_s, "large_img_per_s": large / large_s}]
    report("predict_memory", rows, {}, args)


if __name__ == "__main__":
    main()
