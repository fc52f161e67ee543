"""The zoomed-out mosaic set for choosing small-pothole settings (issue 23, point 4)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import cli_env

from potholes.data.dataset import build_manifest, find_dataset, pair_files
from potholes.data.images import read_image, read_mask
from potholes.data.mosaic import build
from potholes.errors import ConfigError


def pairs(root, split):
    return [(read_image(i), read_mask(m)) for _, i, m in pair_files(root / split / "images", root / split / "mask").pairs]


def test_one_photo_a_frame_at_its_own_size_is_the_photo(synth_data, tmp_path):
    counts = build(synth_data, tmp_path / "same", rows=1, cols=1, frame_hw=(96, 96), seed=0)
    assert counts == {"train": 24, "test": 6}
    source = sorted(pairs(synth_data, "train"), key=lambda p: p[1].sum())
    copied = sorted(pairs(tmp_path / "same", "train"), key=lambda p: p[1].sum())
    assert [m.sum() for _, m in copied] == [m.sum() for _, m in source]  # masks unchanged, in shuffled order


def test_frames_hold_each_splits_own_photos_smaller_and_prepare_reads_them(synth_data, tmp_path):
    out = tmp_path / "mosaic"
    counts = build(synth_data, out, rows=2, cols=2, frame_hw=(96, 96), seed=1)
    assert counts == {"train": 6, "test": 2}  # 24 and 6 photos, 4 a frame: test photos stay in test frames
    for split, photos in (("train", 24), ("test", 6)):
        frames = pairs(out, split)
        assert all(image.shape == (96, 96, 3) and mask.shape == (96, 96) for image, mask in frames)
        cells = -(-photos // 4) * 4  # the last frame's empty cells reuse photos
        source = sum(int(m.sum()) for _, m in pairs(synth_data, split))
        # each photo is a quarter of the frame: its potholes keep about a quarter of their pixels
        assert sum(int(m.sum()) for _, m in frames) == pytest.approx(source / 4 * cells / photos, rel=0.15)
    manifest = build_manifest(out, progress=False).manifest
    assert len(manifest) == 6 and set(manifest["split"]) == {"train", "val"}
    submission = pd.read_csv(out / "sample_submission.csv")
    assert sorted(submission["ImageId"]) == sorted(p.name for p in (out / "test" / "images").iterdir())
    assert find_dataset(out).test_masks is not None


def test_bad_arguments_are_all_named_and_nothing_is_written(synth_data, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=r"out_dir '.*taken' exists.*frame of 64x64 .* leaves cells under 32 px"):
        build(synth_data, tmp_path / "taken", rows=4, cols=4, frame_hw=(64, 64))
    env = cli_env(tmp_path)
    out = subprocess.run([sys.executable, "-m", "potholes", "mosaic", str(synth_data), str(tmp_path / "new"),
                          "--frame", "wide"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "--frame must be WIDTHxHEIGHT in px, e.g. 640x320; got 'wide'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "potholes", "mosaic", str(tmp_path / "none"), str(tmp_path / "new")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "mlflow.db") == ["taken"]
    assert np.all([not p.name.startswith(".new") for p in tmp_path.iterdir()])
