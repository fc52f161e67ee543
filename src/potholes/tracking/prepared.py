"""The manifest a run logged, found again by what it was built from: the same files (by content
digest) split with the same fraction and seed. `train` and `tune` use the one `prepare` logged
(or a later stage copied from it) instead of checking and decoding every training file again,
so the split `prepare` showed is the split they train and tune on."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from potholes.tracking.runs import PREPARED_TAG, manifest_dataset, run_dataset_digest


def prepared_key(files_digest: str, val_fraction: float, seed: int) -> str:
    """One tag value for (files, split): ``0.15`` and ``0.150`` are one fraction."""
    return hashlib.sha256(f"{files_digest}|{float(val_fraction)!r}|{int(seed)}".encode()).hexdigest()[:32]


def read_manifest(path: Path) -> pd.DataFrame:
    """A logged manifest.csv, with the dtypes the manifest had (ids are strings)."""
    return pd.read_csv(path, dtype={"id": str, "image_path": str, "mask_path": str, "split": str})


def find_logged_manifest(key: str) -> tuple[str, pd.DataFrame] | None:
    """(run id, manifest) of the newest finished run of the active experiment tagged with this
    key, `prepare` runs first, when the manifest it logged still has the digest it logged; else None."""
    runs = mlflow.search_runs(filter_string=f"tags.`{PREPARED_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=20, output_format="list")
    runs.sort(key=lambda run: run.data.tags.get("potholes.stage") != "prepare")  # stable: newest first within
    for run in runs[:5]:
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="manifest.csv", dst_path=tmp)
            except Exception:  # noqa: BLE001  an artifact deleted or unreachable: scan the files instead
                continue
            manifest = read_manifest(Path(local))
        if manifest_dataset(manifest, "").digest == run_dataset_digest(run_id):
            return run_id, manifest
    return None
