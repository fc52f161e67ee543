"""Row 4: predict throughput. The full `predict` path (read files, batched flip-TTA ensemble,
post-processing at each image's size, RLE) vs the raw batched forward of the same two models
with TTA on pre-decoded batches, vs the seed's per-image loop of four single-image forwards."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import dataset, parser, report, untrained_checkpoints
from seed_way import seed_tta_logits

from potholes.data.dataset import find_dataset, read_image
from potholes.inference.ensemble import EnsembleConfig, EnsemblePredictor, tta_logits
from potholes.inference.geometry import resize_batch
from potholes.stages.predict import local_rows, submission_order


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args, Path(tmp), n_test=12)
        order = submission_order(find_dataset(data))
        if args.quick:
            order = order[:8]
        dirs = untrained_checkpoints(Path(tmp) / "ckpt", args.img_size)
        predictor = EnsemblePredictor.from_checkpoints(dirs, EnsembleConfig(img_size=args.img_size, min_area=25),
                                                       batch_size=args.batch_size)
        n = len(order)
        list(local_rows(predictor, order[: args.batch_size], progress=False))  # warm-up

        start = time.perf_counter()
        list(local_rows(predictor, order, progress=False))
        full = time.perf_counter() - start

        images = [read_image(path) for _, path in order]
        batches = [resize_batch(images[i:i + args.batch_size], args.img_size) for i in range(0, n, args.batch_size)]
        member = predictor.config.members["unetpp"]
        start = time.perf_counter()
        for batch in batches:
            for name in ("unetpp", "deeplab"):
                tta_logits(predictor.models[name], batch, member["mean"], member["std"])
        raw = time.perf_counter() - start

        models = [predictor.models["unetpp"], predictor.models["deeplab"]]
        start = time.perf_counter()
        for image in images:
            seed_tta_logits(models, image, args.img_size, member["mean"], member["std"])
        seed = time.perf_counter() - start
    rows = [{"row": "4 predict", "images": n, "img_size": args.img_size, "batch": args.batch_size,
             "predict_img_per_s": n / full, "raw_forward_img_per_s": n / raw, "seed_loop_img_per_s": n / seed,
             "predict_vs_raw": raw / full, "target": ">= 0.9", "predict_vs_seed": seed / full}]
    report("predict", rows, {}, args)


if __name__ == "__main__":
    main()
