"""Command line: `potholes <stage>`; the MLproject entry points call these commands."""

from __future__ import annotations

import sys

import click

from potholes import __version__
from potholes.cli_options import (
    DATA_DIR_HELP,
    PRESET_FLOAT,
    PRESET_HELP,
    PRESET_INT,
    PRESET_STR,
    PRESETS,
    Maybe,
    fail,
)
from potholes.dataset_commands import mosaic, synth
from potholes.errors import UserError


@click.group()
@click.version_option(__version__)
@click.option("--experiment-name", default=None, help="MLflow experiment (default: potholes).")
@click.pass_context
def cli(ctx: click.Context, experiment_name: str | None) -> None:
    """Pothole segmentation pipeline, tracked with MLflow."""
    ctx.obj = {"experiment_name": experiment_name}


def _tracking(ctx: click.Context) -> None:
    from potholes.tracking import runs as tracking

    tracking.configure(ctx.obj["experiment_name"])


def _dataset(data_dir: str) -> None:
    """Find the dataset (failing on a wrong path before any run exists) and say which it is."""
    from potholes.data.dataset import find_dataset

    click.echo(f"dataset root: {find_dataset(data_dir).root}")


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--val-fraction", default=0.15, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="share of the training pairs held out for validation")
@click.option("--seed", default=42, show_default=True, type=int, help="seed of the train/val split")
@click.pass_context
def prepare(ctx: click.Context, data_dir: str, val_fraction: float, seed: int) -> None:
    """Check, pair and split the dataset; log statistics, plots and the manifest."""
    from potholes.stages.prepare import SplitConfig, run_prepare

    try:
        _dataset(data_dir)
        _tracking(ctx)
        run_prepare(data_dir, SplitConfig(val_fraction=val_fraction, seed=seed))
    except UserError as exc:
        fail(exc)


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--model", required=True, type=click.Choice(["unetpp", "deeplab"]), help="architecture")
@click.option("--preset", default="auto", show_default=True, type=PRESETS, help=PRESET_HELP)
@click.option("--steps", type=PRESET_INT, default=None,
              help="training budget in optimizer steps; the learning rate warms up, then follows a cosine to 0 "
                   "at the last step  [default: the preset's]")
@click.option("--epochs", type=PRESET_INT, default=None,
              help="train this many passes over the training split instead of the step budget  [default: preset, "
                   "i.e. the budget]")
@click.option("--rounds", type=PRESET_INT, default=None,
              help="validations (and resume points) over the budget  [default: the preset's]")
@click.option("--ema", type=PRESET_FLOAT, default=None,
              help="decay of an exponential moving average of the weights, which is then validated and kept; "
                   "0 = off  [default: the preset's]")
@click.option("--loss", type=Maybe(str, "preset", ("dice_focal", "tversky_focal", "image_dice_focal", "lovasz_focal")),
              default=None,
              help="dice_focal (the seed's), tversky_focal (Tversky 0.3/0.7 + focal), image_dice_focal (each "
                   "image's soft Dice, averaged, + focal) or lovasz_focal (each image's Lovasz hinge, an IoU "
                   "surrogate, averaged, + focal)  [default: the preset's]")
@click.option("--precision", type=Maybe(str, "preset", ("auto", "fp32", "bf16", "fp16")), default=None,
              help="of the training steps: auto (fp16 on CUDA, bf16 on CPUs with bfloat16 units, else fp32), "
                   "fp32, bf16, fp16 (CUDA); validation and saved models are fp32  [default: the preset's]")
@click.option("--batch-size", type=PRESET_INT, default=None, help="images per optimizer step  [default: the preset's]")
@click.option("--img-size", type=Maybe(int, "preset", words=("auto",)), default=None,
              help="pixel budget: photos are seen at about img_size² pixels, a multiple of 32; auto: at least the "
                   "preset's, larger when the training potholes are small (trained on crops of the preset's "
                   "size)  [default: the preset's; cpu: auto]")
@click.option("--crop-size", type=PRESET_INT, default=None,
              help="train on random crops of this size (px, a multiple of 32) of the img_size image; validation, "
                   "tune and predict see the whole image; 0 = whole images  [default: the preset's]")
@click.option("--pothole-crops", type=PRESET_FLOAT, default=None,
              help="share (0 to 1) of those crops placed on a pothole pixel, the rest anywhere, so small "
                   "potholes in large frames are seen  [default: the preset's]")
@click.option("--copy-paste", type=PRESET_FLOAT, default=None,
              help="share (0 to 1) of training samples that get one pothole of another training image pasted "
                   "in, shrunk 0.5-1x  [default: the preset's]")
@click.option("--small-pothole-weight", type=PRESET_FLOAT, default=None,
              help="extra loss weight of a pothole's pixels: all of it up to 64 model px, half at 256 px, "
                   "falling with the square root of the area; needs loss image_dice_focal; 0 = off  "
                   "[default: the preset's]")
@click.option("--lr", type=PRESET_FLOAT, default=None, help="AdamW learning rate  [default: the preset's]")
@click.option("--weight-decay", type=PRESET_FLOAT, default=None, help="AdamW weight decay  [default: the preset's]")
@click.option("--encoder", type=PRESET_STR, default=None,
              help="smp encoder name, e.g. tu-tf_efficientnet_lite0, resnet101  [default: the preset's]")
@click.option("--encoder-weights", type=Maybe(str, "preset", ("imagenet", "none")), default=None,
              help="imagenet (pretrained) or none (random init)  [default: the preset's]")
@click.option("--freeze-stride", type=PRESET_INT, default=None,
              help="keep the pretrained encoder's layers up to this output stride as they are (no gradients: "
                   "cheaper steps): 0 (train every layer), 2, 4, 8 or 16  [default: the preset's]")
@click.option("--num-workers", type=PRESET_INT, default=None,
              help="DataLoader worker processes; results do not depend on it  [default: the preset's]")
@click.option("--threads", type=Maybe(int, "auto"), default=None,
              help="CPU threads of the training step; on CPU results depend on it. On a machine where other "
                   "processes take cores, the cores left free (e.g. 1)  [default: auto, the cores this process "
                   "owns, or POTHOLES_THREADS]")
@click.option("--seed", type=Maybe(int, "default"), default=None, help="training seed  [default: 42]")
@click.option("--deterministic", type=click.BOOL, default=False, show_default=True,
              help="CUDA: deterministic kernels, no cuDNN autotuning (slower); CPU runs are deterministic anyway")
@click.option("--val-fraction", default=0.15, show_default=True, type=float, help="must match prepare's")
@click.option("--split-seed", default=42, show_default=True, type=int, help="must match prepare's --seed")
@click.option("--resume", type=Maybe(str, "none"), default=None,
              help="run id of an interrupted train run to continue (same model, preset and overrides)")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="processes training one model together (DistributedDataParallel: gloo on CPU, one GPU each "
                   "with nccl); more than 1 re-runs this command under torchrun; results depend on it")
@click.pass_context
def train(ctx: click.Context, data_dir: str, model: str, preset: str, resume: str | None,
          val_fraction: float, split_seed: int, nproc: int, **overrides) -> None:
    """Train UNet++ or DeepLabV3+; log curves, the best checkpoint and a resumable last checkpoint.

    Under torchrun (or with --nproc N) each process trains on its share of every step."""
    from potholes.training import cpu_affinity

    cpu_affinity.prepare()  # before torch loads: libgomp reads its thread binding once
    from potholes.training import distributed
    from potholes.training.config import ConfigError, resolve_config

    world = distributed.from_env()
    try:
        if nproc > 1 and world.size > 1:
            raise ConfigError(f"nproc must be 1 under torchrun (WORLD_SIZE={world.size}), got {nproc}: "
                              f"use --nproc or torchrun, not both")
        config = resolve_config(model, preset, resume=resume, val_fraction=val_fraction,
                                split_seed=split_seed, world_size=max(nproc, world.size), **overrides)
        _dataset(data_dir)
        if world.is_main:  # the other ranks of torchrun never touch MLflow
            _tracking(ctx)
        if nproc > 1:
            if config.resume:
                from potholes.training import resume as resume_mod

                resume_mod.check(config, config.resume)  # refuse here, before starting the processes
            distributed.check_gpus(nproc)
            sys.exit(distributed.launch(nproc, sys.argv[1:]))
        from potholes.stages.train import run_train  # not needed by the launcher above

        with distributed.process_group():
            run_train(config, data_dir)
    except UserError as exc:
        fail(exc)


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--unetpp-run", type=Maybe(str, "latest"), default=None,
              help="UNet++ train run id, or best (highest best_val_dice on this split)  "
                   "[default: latest, the newest finished one on this split]")
@click.option("--deeplab-run", type=Maybe(str, "latest"), default=None,
              help="DeepLabV3+ train run id, or best (highest best_val_dice on this split)  "
                   "[default: latest, the newest finished one on this split]")
@click.option("--n-trials", default=40, show_default=True, type=click.IntRange(min=1),
              help="trials in the study, shared by all its workers")
@click.option("--seed", default=42, show_default=True, type=int, help="Optuna sampler seed")
@click.option("--threshold-min", default=0.30, show_default=True, type=float, help="lowest probability threshold tried")
@click.option("--threshold-max", default=0.45, show_default=True, type=float, help="highest probability threshold tried")
@click.option("--min-area-min", default=100, show_default=True, type=int,
              help="smallest min-area tried, in pixels at 512 px (scaled to the model size)")
@click.option("--min-area-max", default=400, show_default=True, type=int,
              help="largest min-area tried, in pixels at 512 px (scaled to the model size)")
@click.option("--storage", type=Maybe(str, "default"), default=None, envvar="POTHOLES_STORAGE",
              help="Optuna storage URL (sqlite:///..., postgresql+psycopg://user@host/db with the password in "
                   "PGPASSWORD or ~/.pgpass, journal:///path); also read from $POTHOLES_STORAGE  "
                   "[default: optuna.db beside mlflow.db]")
@click.option("--study-name", type=Maybe(str, "auto"), default=None,
              help="Optuna study  [default: auto, from the two runs and the split]")
@click.option("--registered-model", default="pothole-ensemble", show_default=True, help="model registry name")
@click.option("--promote", type=click.BOOL, default=False, show_default=True,
              help="make the new version @champion even when it was tuned on other validation data or scores "
                   "lower (by default champion moves only to a better Dice on the same data)")
@click.option("--val-fraction", default=0.15, show_default=True, type=float, help="must match prepare's")
@click.option("--split-seed", default=42, show_default=True, type=int, help="must match prepare's --seed")
@click.pass_context
def tune(ctx: click.Context, data_dir: str, **options) -> None:
    """Search ensemble weight, threshold and min-area with Optuna; register the best ensemble."""
    from potholes.stages.tune import run_tune
    from potholes.tuning.search import TuneConfig

    try:
        config = TuneConfig(**options)
        config.validate()
        _dataset(data_dir)
        _tracking(ctx)
        run_tune(data_dir, config)
    except UserError as exc:
        fail(exc)


@cli.command()
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--model-uri", default="models:/pothole-ensemble@champion", show_default=True,
              help="registered model (models:/NAME@ALIAS or models:/NAME/VERSION) or runs:/ URI")
@click.option("--output", default="submission.csv", show_default=True, help="submission CSV to write")
@click.option("--batch-size", default=None, type=Maybe(int, "auto"),
              help="images per forward  [default: auto, 2 on CPU, 16 on CUDA]")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(["auto", "onnx", "openvino", "torch"]),
              help="auto = OpenVINO (CPUs with bf16) or ONNX Runtime on CPU when the model holds ONNX graphs, "
                   "torch on CUDA or otherwise")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "spark"]),
              help="spark: read and score the images on Spark (pip install -e '.[scale]', Java 17+)")
@click.option("--spark-master", default="local[*]", show_default=True,
              help="with --engine spark: local[N], spark://HOST:PORT, yarn, k8s://https://HOST:PORT")
@click.pass_context
def predict(ctx: click.Context, data_dir: str, model_uri: str, output: str, batch_size: int, runtime: str,
            engine: str, spark_master: str) -> None:
    """Write an RLE submission (ImageId,rle) in sample_submission order with the registered ensemble,
    and its pothole table (one row per pothole) beside it: OUTPUT's stem + .potholes.csv."""
    from potholes.stages.predict import PredictConfig, run_predict

    try:
        _dataset(data_dir)
        _tracking(ctx)
        run_predict(data_dir, PredictConfig(model_uri=model_uri, output=output, batch_size=batch_size,
                                            runtime=runtime, engine=engine, spark_master=spark_master))
    except UserError as exc:
        fail(exc)


@cli.command(name="main")
@click.option("--data-dir", default="data", show_default=True, help=DATA_DIR_HELP)
@click.option("--preset", default="auto", show_default=True, type=PRESETS, help=PRESET_HELP)
@click.option("--n-trials", default=40, show_default=True, type=click.IntRange(min=1), help="Optuna trials of tune")
@click.option("--output", default="submission.csv", show_default=True, help="submission CSV to write")
@click.option("--registered-model", default="pothole-ensemble", show_default=True, help="model registry name")
@click.option("--seed", default=42, show_default=True, type=int,
              help="seed of both trainings and of the Optuna search (the train/val split keeps its own, 42)")
@click.pass_context
def main_pipeline(ctx: click.Context, data_dir: str, preset: str, n_trials: int, output: str,
                  registered_model: str, seed: int) -> None:
    """The whole pipeline: prepare, train both models, tune, predict (one parent run)."""
    from potholes.training import cpu_affinity

    cpu_affinity.prepare()  # before torch loads: libgomp reads its thread binding once
    from potholes.stages.main import run_main

    try:
        _dataset(data_dir)
        _tracking(ctx)
        run_main(data_dir, preset=preset, n_trials=n_trials, output=output, registered_model=registered_model, seed=seed)
    except UserError as exc:
        fail(exc)


cli.add_command(synth)
cli.add_command(mosaic)


def main() -> None:
    cli(prog_name="potholes")


if __name__ == "__main__":
    main()
