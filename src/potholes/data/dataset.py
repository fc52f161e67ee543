"""Dataset discovery, pairing, loading and the reproducible train/val split.

Everything here is pure (no MLflow) so every rule can be tested on small folders.

Layout (the competition's): ``train/images``, ``train/mask`` (or ``masks``), ``test/images``,
optional ``test/mask``, and ``sample_submission.csv``. The competition download nests it as
``dataset/dataset/...``; both are found.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from potholes.data import problems as kinds
from potholes.data.images import (  # noqa: F401 (re-exported: the data layer's public readers)
    MASK_THRESHOLD,
    UnreadableImage,
    binarize_mask,
    decode_image,
    mask_notes,
    read_image,
    read_mask,
    read_raw_mask,
)
from potholes.data.problems import DatasetError, Problem, ProblemReport
from potholes.errors import ConfigError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
MASK_DIR_NAMES = ("mask", "masks")

SYNTH_HINT = (
    "Point --data-dir (MLflow: -P data_dir=...) at the unpacked competition download, "
    "or generate a synthetic dataset with `potholes synth demo/data`."
)


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


def _layout(root: Path) -> DatasetLayout:
    train, test = root / "train", root / "test"
    sample = root / "sample_submission.csv"
    return DatasetLayout(
        root=root,
        train_images=train / "images",
        train_masks=_mask_dir(train),
        test_images=test / "images" if (test / "images").is_dir() else None,
        test_masks=_mask_dir(test) if test.is_dir() else None,
        sample_submission=sample if sample.is_file() else None,
    )


def find_dataset(data_dir: str | Path) -> DatasetLayout:
    """Locate the dataset root under ``data_dir`` (itself, ``dataset/``, ``dataset/dataset/``, or
    any folder up to two levels down holding ``train/images``). Several datasets are an error
    that lists them all, rather than a silent pick of the first."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data_dir '{data_dir}' does not exist or is not a folder. {SYNTH_HINT}")
    candidates = [data_dir, data_dir / "dataset", data_dir / "dataset" / "dataset"]
    candidates += sorted(p.parent.parent for p in data_dir.glob("*/train/images"))
    candidates += sorted(p.parent.parent for p in data_dir.glob("*/*/train/images"))
    roots: dict[Path, Path] = {}
    for root in candidates:
        if (root / "train" / "images").is_dir() and _mask_dir(root / "train") is not None:
            roots.setdefault(root.resolve(), root)
    if len(roots) > 1:
        listed = "\n  - ".join(str(root) for root in roots.values())
        raise DatasetError(f"data_dir '{data_dir}' holds {len(roots)} datasets; pass the one to use as "
                           f"data_dir (MLflow: -P data_dir=...):\n  - {listed}")
    if roots:
        return _layout(next(iter(roots.values())))
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


def _index_by_number(files: list[Path], kind: str, report: ProblemReport) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        number = file_number(path)
        if number is None:
            report.error(kinds.NO_NUMBER, path, f"{kind} '{path.name}' has no number in its name to pair it by")
        elif number in index:
            report.error(kinds.DUPLICATE_NUMBER, path,
                         f"two {kind}s share the number {number}: '{index[number].name}' and '{path.name}'")
        else:
            index[number] = path
    return index


def pair_files(images_dir: Path, masks_dir: Path, report: ProblemReport | None = None) -> Pairing:
    """Pair images with masks by the first number in the file stem.

    Empty folders, duplicate numbers and unnumbered files are errors (the seed silently
    overwrote one); unpaired files are warnings and are left out. Problems go to ``report``;
    without one, errors raise here.
    """
    own = report is None
    report = report or ProblemReport(images_dir.parent)
    image_files, mask_files = list_images(images_dir), list_images(masks_dir)
    for folder, files in ((images_dir, image_files), (masks_dir, mask_files)):
        if not files:
            report.error(kinds.EMPTY_FOLDER, folder, "no .jpg/.jpeg/.png files")
    images = _index_by_number(image_files, "image", report)
    masks = _index_by_number(mask_files, "mask", report)
    if own:
        report.raise_if_errors()
    pairing = Pairing(
        pairs=[(n, images[n], masks[n]) for n in sorted(set(images) & set(masks), key=int)],
        images_without_mask=[images[n] for n in sorted(set(images) - set(masks), key=int)],
        masks_without_image=[masks[n] for n in sorted(set(masks) - set(images), key=int)],
    )
    for path in pairing.images_without_mask:
        report.warn(kinds.UNPAIRED_IMAGE, path, f"no mask numbered {file_number(path)}")
    for path in pairing.masks_without_image:
        report.warn(kinds.UNPAIRED_MASK, path, f"no image numbered {file_number(path)}")
    return pairing


def component_areas(mask: np.ndarray) -> np.ndarray:
    """Pixel areas of the 8-connected components of a binary mask."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return stats[1:count, cv2.CC_STAT_AREA].astype(np.int64)


MANIFEST_COLUMNS = [
    "id", "image_path", "mask_path", "split", "height", "width",
    "pothole_pixels", "area_ratio", "num_components", "max_component_pixels", "min_component_pixels",
]


KeepPair = Callable[[str, np.ndarray, np.ndarray], None]


def scan_pairs(pairs: list[tuple[str, Path, Path]], root: Path, report: ProblemReport | None = None,
               progress: bool = True, keep: KeepPair | None = None) -> tuple[pd.DataFrame, list[int]]:
    """Read every pair once, check it, and measure its mask.

    Returns the manifest rows (without split) and every component area. Unreadable files and
    size mismatches are errors, unusual masks warnings, all recorded in ``report`` (without
    one, errors raise at the end, all together). ``keep(id, image, mask)`` sees each good pair
    as it is decoded, so a stage that needs the pixels too decodes each file once.
    """
    from tqdm.auto import tqdm

    own = report is None
    report = report or ProblemReport(pairs[0][1].parent.parent if pairs else root)
    rows, areas = [], []
    for number, image_path, mask_path in tqdm(pairs, desc="scanning pairs", disable=not progress):
        image = mask = None
        try:
            image = read_image(image_path)
        except UnreadableImage as exc:
            report.error(kinds.UNREADABLE, image_path, exc.reason)
        try:
            raw = read_raw_mask(mask_path)
            mask = binarize_mask(raw)
            if mask_path.suffix.lower() in (".jpg", ".jpeg"):
                report.warn(kinds.JPEG_MASK, mask_path)
            for kind, detail in mask_notes(raw):
                report.warn(kind, mask_path, detail)
        except UnreadableImage as exc:
            report.error(kinds.UNREADABLE, mask_path, exc.reason)
        if image is None or mask is None:
            continue
        if image.shape[:2] != mask.shape[:2]:
            report.error(kinds.SIZE_MISMATCH, image_path,
                         f"size mismatch: image '{image_path.name}' is {image.shape[1]}x{image.shape[0]} "
                         f"but mask '{mask_path.name}' is {mask.shape[1]}x{mask.shape[0]} (width x height)")
            continue
        if keep is not None:
            keep(number, image, mask)
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
    if own:
        report.raise_if_errors()
    return pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c != "split"]), areas


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
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
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
    warnings: list[Problem] = field(default_factory=list)


def build_manifest(data_dir: str | Path, val_fraction: float = 0.15, seed: int = 42, progress: bool = True,
                   keep: KeepPair | None = None) -> PreparedData:
    """Find, pair, check and split the training data. Deterministic for the same files and
    parameters, so its digest identifies the split that every later stage uses.

    Every problem of the folder is collected before it stops: one DatasetError lists them all,
    grouped by kind; warnings (unpaired files, unusual masks) come as one UserWarning.
    ``keep`` as in `scan_pairs`.
    """
    layout = find_dataset(data_dir)
    report = ProblemReport(layout.root / "train")
    pairing = pair_files(layout.train_images, layout.train_masks, report)
    manifest, areas = scan_pairs(pairing.pairs, layout.root, report, progress=progress, keep=keep)
    if not report.errors and len(manifest) < 2:
        report.error(kinds.TOO_FEW, layout.root / "train",
                     f"{len(manifest)} image/mask pair(s); at least 2 are needed. {SYNTH_HINT}")
    report.raise_if_errors()
    if report.warnings:
        warnings.warn(f"{len(report.warnings)} warning(s) about {report.where}:\n{report.warning_text()}", stacklevel=2)
    manifest["split"] = split_train_val(manifest, val_fraction, seed)
    return PreparedData(
        layout=layout,
        manifest=manifest[MANIFEST_COLUMNS].reset_index(drop=True),
        component_areas=areas,
        images_without_mask=pairing.images_without_mask,
        masks_without_image=pairing.masks_without_image,
        warnings=report.warnings,
    )
