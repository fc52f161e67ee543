"""Dataset discovery, pairing, loading and the reproducible train/val split.

Everything here is pure (no MLflow) so every rule can be tested on small folders.

Layout (the competition's): ``train/images``, ``train/mask`` (or ``masks``), ``test/images``,
optional ``test/mask``, and ``sample_submission.csv``. The competition download nests it as
``dataset/dataset/...``; both are found.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
MASK_DIR_NAMES = ("mask", "masks")
# Documented binarisation rule: a pixel is pothole when its value is > 127 (0/255 masks);
# masks whose maximum is 1 are 0/1 masks and use > 0 instead.
MASK_THRESHOLD = 127

SYNTH_HINT = (
    "Point --data-dir (MLflow: -P data_dir=...) at the unpacked competition download, "
    "or generate a synthetic dataset with `potholes synth data/demo`."
)


class DatasetError(ValueError):
    """A dataset problem a user must fix; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, where: Path | str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"{len(self.problems)} problem(s) in {where}:" if where else "dataset problem:"
        super().__init__("\n  - ".join([head, *self.problems]))


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    train_images: Path
    train_masks: Path
    test_images: Path | None
    test_masks: Path | None
    sample_submission: Path | None


def _mask_dir(parent: Path) -> Path | None:
    for name in MASK_DIR_NAMES:
        if (parent / name).is_dir():
            return parent / name
    return None


def find_dataset(data_dir: str | Path) -> DatasetLayout:
    """Locate the dataset root under ``data_dir`` (itself, ``dataset/``, ``dataset/dataset/``, or
    any folder up to two levels down holding ``train/images``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data_dir '{data_dir}' does not exist or is not a folder. {SYNTH_HINT}")
    candidates = [data_dir, data_dir / "dataset", data_dir / "dataset" / "dataset"]
    candidates += sorted(p.parent.parent for p in data_dir.glob("*/train/images"))
    candidates += sorted(p.parent.parent for p in data_dir.glob("*/*/train/images"))
    for root in candidates:
        train = root / "train"
        if (train / "images").is_dir() and _mask_dir(train) is not None:
            test = root / "test"
            sample = root / "sample_submission.csv"
            return DatasetLayout(
                root=root,
                train_images=train / "images",
                train_masks=_mask_dir(train),
                test_images=test / "images" if (test / "images").is_dir() else None,
                test_masks=_mask_dir(test) if test.is_dir() else None,
                sample_submission=sample if sample.is_file() else None,
            )
    raise DatasetError(
        f"no dataset under '{data_dir}': expected train/images and train/mask (or train/masks), "
        f"directly or nested as dataset/dataset/. {SYNTH_HINT}"
    )


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (.jpg .jpeg .png in any letter case), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def file_number(path: Path) -> str | None:
    """The first number in the file stem, as the seed pairs files (``pothole_12`` ↔ ``mask_12``)."""
    match = re.search(r"\d+", path.stem)
    return str(int(match.group())) if match else None


@dataclass
class Pairing:
    pairs: list[tuple[str, Path, Path]]  # (id, image, mask)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)


def _index_by_number(files: list[Path], kind: str, problems: list[str]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        number = file_number(path)
        if number is None:
            problems.append(f"{kind} '{path.name}' has no number in its name to pair it by")
        elif number in index:
            problems.append(
                f"two {kind}s share the number {number}: '{index[number].name}' and '{path.name}'"
            )
        else:
            index[number] = path
    return index


def pair_files(images_dir: Path, masks_dir: Path) -> Pairing:
    """Pair images with masks by the first number in the file stem.

    Duplicate numbers and unnumbered files are errors (the seed silently overwrote one);
    unpaired files are reported on the result so the caller can warn about them.
    """
    problems: list[str] = []
    images = _index_by_number(list_images(images_dir), "image", problems)
    masks = _index_by_number(list_images(masks_dir), "mask", problems)
    if problems:
        raise DatasetError(problems, images_dir.parent)
    numbers = sorted(set(images) & set(masks), key=int)
    return Pairing(
        pairs=[(n, images[n], masks[n]) for n in numbers],
        images_without_mask=[images[n] for n in sorted(set(images) - set(masks), key=int)],
        masks_without_image=[masks[n] for n in sorted(set(masks) - set(images), key=int)],
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array // 257).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (grayscale, RGBA and 16-bit handled)."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if array is None:
        raise DatasetError(f"'{name}' is not a readable JPEG/PNG image (corrupt or wrong format)")
    array = _to_uint8(array)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8; raises DatasetError naming the file when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read '{path}': {exc.strerror}") from exc
    return decode_image(data, str(path))


def binarize_mask(raw: np.ndarray, name: str = "mask") -> np.ndarray:
    """Binarise a mask to {0,1} uint8 with the documented rule (> 127; 0/1 masks: > 0).

    Warns when a 0/255 mask holds other values (JPEG-compressed or anti-aliased masks).
    """
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    raw = _to_uint8(raw)
    peak = int(raw.max()) if raw.size else 0
    if peak == 1:
        return raw.astype(np.uint8)
    odd = np.count_nonzero((raw != 0) & (raw != 255))
    if odd:
        warnings.warn(
            f"mask '{name}' holds {odd} pixel(s) with values other than 0/255; "
            f"binarised with > {MASK_THRESHOLD}",
            stacklevel=2,
        )
    return (raw > MASK_THRESHOLD).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"'{path}' is not a readable mask image (corrupt or wrong format)")
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[..., :3]
    return binarize_mask(raw, str(path))


def component_areas(mask: np.ndarray) -> np.ndarray:
    """Pixel areas of the 8-connected components of a binary mask."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return stats[1:count, cv2.CC_STAT_AREA].astype(np.int64)


MANIFEST_COLUMNS = [
    "id", "image_path", "mask_path", "split", "height", "width",
    "pothole_pixels", "area_ratio", "num_components", "max_component_pixels", "min_component_pixels",
]


def scan_pairs(pairs: list[tuple[str, Path, Path]], root: Path, progress: bool = True) -> tuple[pd.DataFrame, list[int]]:
    """Read every pair once, check it, and measure its mask.

    Returns the manifest rows (without split) and every component area. All problems of the
    folder (unreadable files, size mismatches) are collected and raised together.
    """
    from tqdm.auto import tqdm

    rows, areas, problems = [], [], []
    for number, image_path, mask_path in tqdm(pairs, desc="scanning pairs", disable=not progress):
        try:
            image = read_image(image_path)
            mask = read_mask(mask_path)
        except DatasetError as exc:
            problems.extend(exc.problems)
            continue
        if image.shape[:2] != mask.shape[:2]:
            problems.append(
                f"size mismatch: image '{image_path.name}' is {image.shape[1]}x{image.shape[0]} "
                f"but mask '{mask_path.name}' is {mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
            continue
        comp = component_areas(mask)
        areas.extend(comp.tolist())
        pixels = int(mask.sum())
        rows.append({
            "id": number,
            "image_path": image_path.relative_to(root).as_posix(),
            "mask_path": mask_path.relative_to(root).as_posix(),
            "height": image.shape[0],
            "width": image.shape[1],
            "pothole_pixels": pixels,
            "area_ratio": pixels / (image.shape[0] * image.shape[1]),
            "num_components": len(comp),
            "max_component_pixels": int(comp.max()) if len(comp) else 0,
            "min_component_pixels": int(comp.min()) if len(comp) else 0,
        })
    if problems:
        raise DatasetError(problems, pairs[0][1].parent.parent if pairs else root)
    return pd.DataFrame(rows), areas


def stratify_labels(area_ratio: pd.Series, bins: int) -> pd.Series:
    """'empty' or the area-ratio quantile bin of a non-empty mask."""
    labels = pd.Series("empty", index=area_ratio.index, dtype=object)
    nonempty = area_ratio > 0
    if nonempty.sum() and bins > 1:
        binned = pd.qcut(area_ratio[nonempty].rank(method="first"), q=bins, labels=False)
        labels[nonempty] = "q" + binned.astype(str)
    elif nonempty.sum():
        labels[nonempty] = "pothole"
    return labels


def split_train_val(manifest: pd.DataFrame, val_fraction: float = 0.15, seed: int = 42) -> pd.Series:
    """Reproducible split stratified on has-pothole and area-ratio quartiles.

    Falls back to fewer bins (then to an unstratified split) when a small dataset cannot
    fill every stratum in both parts.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    n = len(manifest)
    n_val = int(np.ceil(n * val_fraction))
    if n < 2 or n_val >= n:
        raise DatasetError(f"{n} pair(s) is too few to hold out a validation fraction of {val_fraction}")
    index = manifest.index.to_numpy()
    for bins in (4, 3, 2, 1, 0):
        labels = stratify_labels(manifest["area_ratio"], bins) if bins else None
        if labels is not None:
            counts = labels.value_counts()
            if counts.min() < 2 or len(counts) > n_val or len(counts) > n - n_val:
                continue
        _, val_index = train_test_split(index, test_size=n_val, random_state=seed, stratify=labels)
        split = pd.Series("train", index=manifest.index)
        split[val_index] = "val"
        return split
    raise AssertionError("unreachable: the unstratified split always succeeds")


@dataclass
class PreparedData:
    layout: DatasetLayout
    manifest: pd.DataFrame
    component_areas: list[int]
    images_without_mask: list[Path]
    masks_without_image: list[Path]


def build_manifest(data_dir: str | Path, val_fraction: float = 0.15, seed: int = 42, progress: bool = True) -> PreparedData:
    """Find, pair, check and split the training data. Deterministic for the same files and
    parameters, so its digest identifies the split that every later stage uses."""
    layout = find_dataset(data_dir)
    pairing = pair_files(layout.train_images, layout.train_masks)
    for path in pairing.images_without_mask:
        warnings.warn(f"image '{path.name}' has no mask and is left out", stacklevel=2)
    for path in pairing.masks_without_image:
        warnings.warn(f"mask '{path.name}' has no image and is left out", stacklevel=2)
    if not pairing.pairs:
        raise DatasetError(f"no image/mask pairs in '{layout.root / 'train'}'. {SYNTH_HINT}")
    manifest, areas = scan_pairs(pairing.pairs, layout.root, progress=progress)
    manifest["split"] = split_train_val(manifest, val_fraction, seed)
    return PreparedData(
        layout=layout,
        manifest=manifest[MANIFEST_COLUMNS].reset_index(drop=True),
        component_areas=areas,
        images_without_mask=pairing.images_without_mask,
        masks_without_image=pairing.masks_without_image,
    )
