"""Command line: `potholes <stage>`; the MLproject entry points call these commands."""

from __future__ import annotations

import sys

import click

from potholes import __version__
from potholes.data import DatasetError

DATA_DIR_HELP = "dataset folder (competition layout: train/images, train/mask, test/images, sample_submission.csv)"


class Maybe(click.ParamType):
    """A value or nothing: MLproject passes unset overrides as empty strings."""

    def __init__(self, inner: type, choices: tuple[str, ...] = ()):
        self.inner, self.choices, self.name = inner, choices, f"{inner.__name__}?"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        if self.choices and value not in self.choices:
            self.fail(f"expected one of {list(self.choices)}, got '{value}'", param, ctx)
        try:
            return self.inner(value)
        except ValueError:
            self.fail(f"expected {self.inner.__name__}, got '{value}'", param, ctx)


OPT_INT, OPT_FLOAT, OPT_STR = Maybe(int), Maybe(float), Maybe(str)


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
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--model", required=True, type=click.Choice(["unetpp", "deeplab"]), help="architecture")
@click.option("--preset", default="auto", show_default=True, type=click.Choice(["auto", "full", "cpu", "smoke"]),
              help="auto = full with CUDA, else cpu")
@click.option("--epochs", type=OPT_INT, default=None, help="override the preset")
@click.option("--batch-size", type=OPT_INT, default=None, help="override the preset")
@click.option("--img-size", type=OPT_INT, default=None, help="override the preset (multiple of 32)")
@click.option("--lr", type=OPT_FLOAT, default=None, help="override the preset")
@click.option("--weight-decay", type=OPT_FLOAT, default=None, help="override the preset")
@click.option("--encoder", type=OPT_STR, default=None, help="smp encoder name, e.g. tu-tf_efficientnet_lite0, resnet101")
@click.option("--encoder-weights", type=Maybe(str, ("imagenet", "none")), default=None, help="override the preset")
@click.option("--num-workers", type=OPT_INT, default=None, help="DataLoader workers")
@click.option("--seed", type=OPT_INT, default=None, help="training seed (default 42)")
@click.option("--val-fraction", default=0.15, show_default=True, type=float, help="must match prepare's")
@click.option("--split-seed", default=42, show_default=True, type=int, help="must match prepare's --seed")
@click.option("--resume", type=OPT_STR, default=None, help="run id of an interrupted train run to continue")
@click.pass_context
def train(ctx: click.Context, data_dir: str, model: str, preset: str, resume: str | None,
          val_fraction: float, split_seed: int, **overrides) -> None:
    """Train UNet++ or DeepLabV3+; log curves, the best checkpoint and a resumable last checkpoint."""
    from potholes.config import ConfigError, resolve_config
    from potholes.data import find_dataset
    from potholes.models import WeightsUnavailable
    from potholes.train import run_train

    try:
        config = resolve_config(model, preset, resume=resume, val_fraction=val_fraction,
                                split_seed=split_seed, **overrides)
        find_dataset(data_dir)
        _tracking(ctx)
        run_train(config, data_dir)
    except (ConfigError, DatasetError, WeightsUnavailable, ValueError) as exc:
        _fail(exc)


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--unetpp-run", type=OPT_STR, default=None, help="train run id (default: latest finished one on this split)")
@click.option("--deeplab-run", type=OPT_STR, default=None, help="train run id (default: latest finished one on this split)")
@click.option("--n-trials", default=40, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--threshold-min", default=0.30, show_default=True, type=float)
@click.option("--threshold-max", default=0.45, show_default=True, type=float)
@click.option("--min-area-min", default=100, show_default=True, type=int, help="pixels at 512 px (scaled to model size)")
@click.option("--min-area-max", default=400, show_default=True, type=int, help="pixels at 512 px (scaled to model size)")
@click.option("--storage", type=OPT_STR, default=None, help="Optuna RDB URL (default: optuna.db beside mlflow.db)")
@click.option("--study-name", type=OPT_STR, default=None, help="default: derived from the two runs and the split")
@click.option("--registered-model", default="pothole-ensemble", show_default=True)
@click.option("--val-fraction", default=0.15, show_default=True, type=float, help="must match prepare's")
@click.option("--split-seed", default=42, show_default=True, type=int, help="must match prepare's --seed")
@click.pass_context
def tune(ctx: click.Context, data_dir: str, **options) -> None:
    """Search ensemble weight, threshold and min-area with Optuna; register the best ensemble."""
    from potholes.tune import TuneConfig, run_tune

    try:
        config = TuneConfig(**options)
        config.validate()
        from potholes.data import find_dataset

        find_dataset(data_dir)
        _tracking(ctx)
        run_tune(data_dir, config)
    except (DatasetError, ValueError) as exc:
        _fail(exc)


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--model-uri", default="models:/pothole-ensemble@champion", show_default=True)
@click.option("--output", default="submission.csv", show_default=True)
@click.option("--batch-size", default=None, type=OPT_INT, help="images per forward (default: 2 on CPU, 16 on CUDA)")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(["auto", "onnx", "torch"]),
              help="auto = ONNX Runtime on CPU when the model holds ONNX graphs, torch on CUDA or otherwise")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "spark"]),
              help="spark: read and score the images on Spark (pip install -e '.[scale]', Java 17+)")
@click.option("--spark-master", default="local[*]", show_default=True,
              help="with --engine spark: local[N], spark://HOST:PORT, yarn, k8s://https://HOST:PORT")
@click.pass_context
def predict(ctx: click.Context, data_dir: str, model_uri: str, output: str, batch_size: int, runtime: str,
            engine: str, spark_master: str) -> None:
    """Write an RLE submission (ImageId,rle) in sample_submission order with the registered ensemble,
    and potholes.csv (one row per pothole) beside it."""
    from potholes.predict import PredictConfig, run_predict

    try:
        _tracking(ctx)
        run_predict(data_dir, PredictConfig(model_uri=model_uri, output=output, batch_size=batch_size,
                                            runtime=runtime, engine=engine, spark_master=spark_master))
    except (DatasetError, ValueError) as exc:
        _fail(exc)


@cli.command(name="main")
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--preset", default="auto", show_default=True, type=click.Choice(["auto", "full", "cpu", "smoke"]))
@click.option("--n-trials", default=40, show_default=True, type=int)
@click.option("--output", default="submission.csv", show_default=True)
@click.option("--registered-model", default="pothole-ensemble", show_default=True)
@click.pass_context
def main_pipeline(ctx: click.Context, data_dir: str, preset: str, n_trials: int, output: str,
                  registered_model: str) -> None:
    """The whole pipeline: prepare, train both models, tune, predict (one parent run)."""
    from potholes.config import ConfigError
    from potholes.data import find_dataset
    from potholes.models import WeightsUnavailable
    from potholes.pipeline import run_main

    try:
        find_dataset(data_dir)
        _tracking(ctx)
        run_main(data_dir, preset=preset, n_trials=n_trials, output=output, registered_model=registered_model)
    except (ConfigError, DatasetError, WeightsUnavailable, ValueError) as exc:
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
