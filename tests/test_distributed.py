"""DistributedDataParallel training on CPU (gloo): metrics reduced over ranks exactly, one MLflow
run per training written by rank 0, deterministic for a world size, resumable under torchrun."""

import signal
import socket
import subprocess
import sys

import mlflow
import numpy as np
import psutil
import pytest
import torch
from ddp_ranks import CONFIG, datasets, rank_worker, tiny_model
from helpers import cli_env, curves, train_runs, wait_for
from mlflow.tracking import MlflowClient

from potholes.data.dataset import build_manifest
from potholes.inference.networks import load_checkpoint
from potholes.training import distributed, resume
from potholes.training import loop as train_mod
from potholes.training.config import resolve_config
from potholes.training.loader import SegmentationDataset, load_split, make_loader
from potholes.training.losses import criterion


def test_launcher_reruns_the_same_command_under_torchrun_without_nproc():
    argv = ["--experiment-name", "x", "train", "--model", "deeplab", "--nproc", "2", "--seed=3", "--nproc=2"]
    assert distributed.torchrun_command(2, argv) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "potholes",
        "--experiment-name", "x", "train", "--model", "deeplab", "--seed=3"]


def test_bad_nproc_is_refused_before_any_run(tmp_path, synth_data):
    env = cli_env(tmp_path)
    for args, extra, message in [
            (["--nproc", "0"], {}, "Invalid value for '--nproc': 0 is not in the range x>=1"),
            (["--nproc", "two"], {}, "Invalid value for '--nproc': 'two' is not a valid integer"),
            (["--nproc", "2"], {"WORLD_SIZE": "2"}, "nproc must be 1 under torchrun (WORLD_SIZE=2), got 2")]:
        out = subprocess.run([sys.executable, "-m", "potholes", "train", "--model", "deeplab", "--preset", "smoke",
                              "--data-dir", str(synth_data), *args], capture_output=True, text=True,
                             env={**env, **extra}, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- two ranks, in process
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_reduce_train_loss_and_validate_each_image_once(tmp_path):
    torch.multiprocessing.spawn(rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["val_batches"] == [4] and ranks[1]["val_batches"] == [1]

    config = resolve_config(**CONFIG)
    train_set, val_set = datasets(config)
    loss_fn = criterion(config)
    # train_loss: the mean over both ranks' batches, each computed here with the untouched weights
    model, total, seen = tiny_model().train(), 0.0, 0
    for rank in (0, 1):
        loader = make_loader(train_set, config, train=True, rank=rank, world_size=2, steps_per_round=2)
        loader.sampler.set_round(3)
        with torch.no_grad():
            for images, masks in loader:
                total += float(loss_fn(model(images.contiguous(memory_format=torch.channels_last)), masks)) * len(images)
                seen += len(images)
    assert seen == 8  # 2 steps of 2 images a rank
    for rank in ranks:
        assert rank["train"]["train_loss"] == pytest.approx(total / seen, rel=1e-6)

    # BatchNorm statistics were updated on both ranks from different images, then made rank 0's
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(ranks[0]["state"]["1.running_mean"], torch.zeros(4))

    # validation: every image once, the same numbers as one process evaluating the whole set
    model.load_state_dict(ranks[0]["state"])
    single = train_mod.evaluate(model, make_loader(val_set, config, train=False), loss_fn, 0.4,
                                torch.device("cpu"))
    for rank in ranks:
        assert rank["val"] == pytest.approx(single, rel=1e-12)


# ----------------------------------------------------------------------------- torchrun, end to end
TRAIN = ["train", "--model", "deeplab", "--preset", "smoke", "--epochs", "6", "--batch-size", "2",
         "--val-fraction", "0.4", "--seed", "5"]  # 14 train images (3 steps a rank), 10 val (batches 4+4 | 2)


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    def find():
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except psutil.Error:
                pass
    return wait_for(find, what=f"rank {rank}")


@pytest.mark.slow
def test_torchrun_trains_one_run_deterministically_survives_a_lost_rank_and_resumes(tmp_path, synth_data, monkeypatch):
    env = cli_env(tmp_path)
    data = ["--data-dir", str(synth_data)]
    uri = env["MLFLOW_TRACKING_URI"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "potholes"]
    out = subprocess.run([*torchrun, *TRAIN, *data], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [straight] = train_runs(uri)
    assert straight.info.status == "FINISHED" and straight.data.params["config.world_size"] == "2"
    assert out.stdout.count("| round 01/6 |") == 1  # rank 0 alone reports

    # the same training through `potholes train --nproc 2`; rank 1 dies after round 1's resume point
    launcher = subprocess.Popen(["potholes", *TRAIN, *data, "--nproc", "2"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = MlflowClient(uri)
        run = wait_for(lambda: next(iter(train_runs(uri)[1:]), None), what="the second run")
        wait_for(lambda: client.list_artifacts(run.info.run_id, "checkpoints/last"), what="round 1's resume point")
        rank_process(launcher, 1).send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0  # torchrun stops rank 0 and fails; nothing hangs
    finally:
        launcher.kill()
        launcher.wait()
    run_id = run.info.run_id
    lost = client.get_run(run_id)
    assert lost.info.status in ("FAILED", "KILLED")  # ended by rank 0 itself, not left RUNNING
    assert len(client.get_metric_history(run_id, "val_dice")) < 6
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    config = resolve_config("deeplab", "smoke", epochs=6, batch_size=2, val_fraction=0.4, seed=5)
    with pytest.raises(ValueError, match="(?s)world_size: the run has 2, this command 1.*pass as many processes"):
        resume.check(config, run_id)  # a world of another size would not continue it exactly

    out = subprocess.run(["potholes", *TRAIN, *data, "--nproc", "2", "--resume", run_id],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming run {run_id} after round" in out.stdout
    assert [r.info.run_id for r in train_runs(uri)] == [straight.info.run_id, run_id]  # one run per training
    assert client.get_run(run_id).info.status == "FINISHED"
    resumed, expected = curves(run_id), curves(straight.info.run_id)
    for key in expected:
        assert [step for step, _ in resumed[key]] == [3 * r for r in range(1, 7)], key  # 3 steps a round
        np.testing.assert_allclose([v for _, v in resumed[key]], [v for _, v in expected[key]], rtol=0, atol=1e-6,
                                   err_msg=key)

    # the logged val metrics are those of one process evaluating the best checkpoint on the whole val set
    model, _ = load_checkpoint(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/best",
                                                                   dst_path=str(tmp_path / "best")))
    prepared = build_manifest(synth_data, val_fraction=0.4, progress=False)
    images, masks = load_split(prepared.layout.root, prepared.manifest, "val", 64, progress=False)
    assert len(images) == 10
    scores = train_mod.evaluate(model.to(memory_format=torch.channels_last),
                                make_loader(SegmentationDataset(images, masks, config.mean, config.std),
                                                      config, train=False),
                                criterion(config), 0.4, torch.device("cpu"))
    metrics = client.get_run(run_id).data.metrics
    best_step = int(metrics["best_step"])
    assert scores["val_dice"] == pytest.approx(metrics["best_val_dice"], abs=1e-9)
    assert scores["val_loss"] == pytest.approx(dict(expected["val_loss"])[best_step], rel=1e-6)
