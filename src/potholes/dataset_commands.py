"""`potholes synth` and `potholes mosaic`: datasets written for trying and choosing, not for
quoting (a synthetic set in the competition layout; a zoomed-out copy of a real one)."""

from __future__ import annotations

import click

from potholes.cli_options import fail
from potholes.errors import UserError


@click.command()
@click.argument("out_dir")
@click.option("--n-train", default=40, show_default=True, type=click.IntRange(min=2), help="training pairs to write")
@click.option("--n-test", default=10, show_default=True, type=click.IntRange(min=1), help="test pairs to write")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32), help="image side in px")
@click.option("--seed", default=0, show_default=True, type=int, help="generator seed")
def synth(out_dir: str, n_train: int, n_test: int, size: int, seed: int) -> None:
    """Write a deterministic synthetic pothole dataset in the competition layout."""
    from potholes.data.synthetic import generate

    path = generate(out_dir, n_train=n_train, n_test=n_test, size=size, seed=seed)
    click.echo(f"wrote {n_train} train and {n_test} test images ({size}px) to {path}")


@click.command()
@click.argument("source")
@click.argument("out_dir")
@click.option("--rows", default=2, show_default=True, type=int, help="photos down a frame")
@click.option("--cols", default=4, show_default=True, type=int, help="photos across a frame")
@click.option("--frame", default="640x320", show_default=True, help="frame size, width x height in px")
@click.option("--seed", default=0, show_default=True, type=int, help="order of the photos in the frames")
def mosaic(source: str, out_dir: str, rows: int, cols: int, frame: str, seed: int) -> None:
    """Write a zoomed-out copy of the dataset at SOURCE: frames of ROWS x COLS downscaled photos, to
    choose small-pothole settings on (its validation split), never to quote as a quality figure."""
    from potholes.data.mosaic import build

    try:
        width, height = (int(side) for side in frame.lower().split("x"))
    except ValueError:
        fail(UserError(f"--frame must be WIDTHxHEIGHT in px, e.g. 640x320; got '{frame}'"))
    try:
        counts = build(source, out_dir, rows=rows, cols=cols, frame_hw=(height, width), seed=seed)
    except UserError as exc:
        fail(exc)
    click.echo(f"wrote {', '.join(f'{n} {split}' for split, n in counts.items())} frames of {cols}x{rows} photos "
               f"({width}x{height}) to {out_dir}")
