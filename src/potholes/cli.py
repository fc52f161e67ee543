"""Command line: `potholes <stage>`; the MLproject entry points call these commands."""

from __future__ import annotations

import sys

import click

from potholes import __version__
from potholes.data import DatasetError

DATA_DIR_HELP = "dataset folder (competition layout: train/images, train/mask, test/images, sample_submission.csv)"


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__)
@click.option("--experiment-name", default=None, help="MLflow experiment (default: potholes).")
@click.pass_context
def cli(ctx: click.Context, experiment_name: str | None) -> None:
    """Pothole segmentation pipeline, tracked with MLflow."""
    ctx.obj = {"experiment_name": experiment_name}


def _tracking(ctx: click.Context) -> None:
    from potholes import tracking

    tracking.configure(ctx.obj["experiment_name"])


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--val-fraction", default=0.15, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--seed", default=42, show_default=True, type=int)
@click.pass_context
def prepare(ctx: click.Context, data_dir: str, val_fraction: float, seed: int) -> None:
    """Check, pair and split the dataset; log statistics, plots and the manifest."""
    from potholes.prepare import SplitConfig, run_prepare

    try:
        from potholes.data import find_dataset

        find_dataset(data_dir)  # fail on a wrong path before any run is created
        _tracking(ctx)
        run_prepare(data_dir, SplitConfig(val_fraction=val_fraction, seed=seed))
    except DatasetError as exc:
        _fail(exc)


@cli.command()
@click.argument("out_dir")
@click.option("--n-train", default=40, show_default=True, type=click.IntRange(min=2))
@click.option("--n-test", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32))
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out_dir: str, n_train: int, n_test: int, size: int, seed: int) -> None:
    """Write a deterministic synthetic pothole dataset in the competition layout."""
    from potholes.synth import generate

    path = generate(out_dir, n_train=n_train, n_test=n_test, size=size, seed=seed)
    click.echo(f"wrote {n_train} train and {n_test} test images ({size}px) to {path}")


def main() -> None:
    cli(prog_name="potholes")


if __name__ == "__main__":
    main()
