"""A digest of the training files' names and bytes: what lets a later stage know, without
decoding anything, that the files are still the ones `prepare` checked and split."""

from __future__ import annotations

import hashlib
from pathlib import Path


def files_digest(root: Path, folders: list[Path]) -> str:
    """SHA-256 over every file of ``folders`` (path relative to ``root`` and content), in name
    order. Reading bytes costs far less than decoding them, and unlike a modification time it
    survives a copy or a fresh clone."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()
