"""Dataset problems, collected over a whole folder and reported once, grouped by kind.

A stage that reads a dataset records every problem it meets and stops only at the end, so a
user fixes a broken folder in one round instead of one error per run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from potholes.errors import UserError

# Errors stop the stage; the order is the order of the report.
MISSING_FOLDER = "missing folder"
EMPTY_FOLDER = "empty folder"
DUPLICATE_NUMBER = "two files share a number"
NO_NUMBER = "no number in the file name to pair it by"
UNREADABLE = "unreadable or corrupt image"
SIZE_MISMATCH = "image and mask sizes differ"
TOO_FEW = "too few pairs"
# Warnings: the stage goes on (the file is skipped or used as described).
UNPAIRED_IMAGE = "image without a mask (skipped)"
UNPAIRED_MASK = "mask without an image (skipped)"
JPEG_MASK = "JPEG mask (lossy; binarised with > 127)"
ZERO_ONE_MASK = "0/1 mask (used as is: 1 = pothole)"
ODD_VALUES = "mask values other than 0/255 (binarised with > 127)"


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str  # as the user knows it: relative to the folder the report is about
    detail: str = ""

    def line(self) -> str:
        return f"{self.file}: {self.detail}" if self.detail else self.file


class DatasetError(UserError, ValueError):
    """A dataset problem a user must fix; the message lists every problem found, by kind."""

    def __init__(self, problems: list[str] | str | list[Problem], where: Path | str | None = None,
                 warnings: list[Problem] = ()):
        items = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [p.line() if isinstance(p, Problem) else p for p in items]
        if items and all(isinstance(p, Problem) for p in items):
            message = format_report(items, list(warnings), where)
        else:
            head = f"{len(self.problems)} problem(s) in {where}:" if where else "dataset problem:"
            message = "\n  - ".join([head, *self.problems])
        super().__init__(message)


def _grouped(problems: list[Problem]) -> list[str]:
    groups: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        groups[problem.kind].append(problem)
    lines = []
    for kind, members in groups.items():
        lines.append(f"  {kind} ({len(members)}):")
        lines.extend(f"    {p.line()}" for p in members)
    return lines


def format_report(errors: list[Problem], warnings: list[Problem], where: Path | str | None) -> str:
    kinds = len({p.kind for p in errors})
    lines = [f"{len(errors)} problem(s) of {kinds} kind(s) in {where}:" if where else f"{len(errors)} dataset problem(s):"]
    lines += _grouped(errors)
    if warnings:
        lines.append(f"and {len(warnings)} warning(s):")
        lines += _grouped(warnings)
    return "\n".join(lines)


@dataclass
class ProblemReport:
    """Collects errors and warnings about one dataset folder."""
    where: Path
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def name(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.where).as_posix()
        except ValueError:
            return str(path)

    def error(self, kind: str, path: Path | str, detail: str = "") -> None:
        self.errors.append(Problem(kind, self.name(Path(path)), detail))

    def warn(self, kind: str, path: Path | str, detail: str = "") -> None:
        self.warnings.append(Problem(kind, self.name(Path(path)), detail))

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DatasetError(self.errors, self.where, self.warnings)

    def warning_text(self) -> str:
        return "\n".join(_grouped(self.warnings))
