"""Row 6c: the cpu preset's whole pipeline on a larger dataset, to check that a step budget keeps
it within 20 minutes as the data grows. The dataset is the real photos repeated (links, under new
numbers) up to --train training and --test test pairs: the stages that grow with the data
(checking and decoding every image, validation, tune's pass over the validation split, predict)
cost what they would on new photos of the same size, while training costs its fixed budget.

    python benchmarks/bench_scale.py --train 2000 --test 300
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from bench_quality import run_pipeline
from common import dataset, parser, report, stage_seconds


def repeated_dataset(source: Path, out: Path, n_train: int, n_test: int) -> Path:
    """``n_train`` / ``n_test`` pairs linking to the photos of ``source``, cycled, numbered 1..N."""
    from potholes.data.dataset import build_manifest, file_number, list_images

    pairs = build_manifest(source, progress=False).manifest
    pairs = [(source / r.image_path, source / r.mask_path) for r in pairs.itertuples()]
    test = [(p, source / "test" / "mask" / f"mask_{file_number(p)}.png") for p in list_images(source / "test" / "images")]
    numbers, test_ids = itertools.count(1), []
    for split, sources, count in (("train", pairs, n_train), ("test", test, n_test)):
        (out / split / "images").mkdir(parents=True)
        (out / split / "mask").mkdir(parents=True)
        for (image, mask), number in zip(itertools.islice(itertools.cycle(sources), count), numbers):
            name = f"pothole_{number}{image.suffix}"
            os.symlink(image.resolve(), out / split / "images" / name)
            if mask.is_file():
                os.symlink(mask.resolve(), out / split / "mask" / f"mask_{number}.png")
            if split == "test":
                test_ids.append(name)
    (out / "sample_submission.csv").write_text("ImageId,rle\n" + "".join(f"{name},\n" for name in test_ids))
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--train", type=int, default=2000, help="training pairs")
    p.add_argument("--test", type=int, default=300, help="test images")
    p.add_argument("--n-trials", type=int, default=40)
    p.add_argument("--keep", default=None, help="folder to keep the tracking store in (default: a temp folder)")
    args = p.parse_args()
    if args.quick:
        args.preset, args.train, args.test, args.n_trials = "smoke", 30, 4, 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = dataset(args, tmp, n_train=12, n_test=3, size=64)
        data = repeated_dataset(Path(source), tmp / "scaled", args.train, args.test)
        out = run_pipeline(data, Path(args.keep or tmp / "store").resolve(), args.preset, args.n_trials, seed=1)
    m = out["metrics"]
    row = {"row": "6c scale", "train_pairs": args.train, "test_images": args.test, "preset": args.preset,
           **stage_seconds(m), "wall_seconds": out["wall_seconds"],
           "within_20_min": out["wall_seconds"] <= 1200}
    report("scale", [row], {"command": out["command"], "target": "wall <= 1200 s"}, args)


if __name__ == "__main__":
    main()
