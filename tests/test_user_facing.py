"""What a user reads and gets: --help, bad-parameter messages, file permissions."""

import os
import stat
import subprocess
import sys

import click
import pandas as pd
import pytest

from potholes.cli import cli
from potholes.data.dataset import DatasetError
from potholes.stages.predict_outputs import write_csv_atomically
from potholes.training.config import ConfigError

COMMANDS = ["prepare", "train", "tune", "predict", "main", "synth"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_real_types_and_every_option_has_a_help_text(name):
    command = cli.commands[name]
    ctx = click.Context(command, info_name=name)
    text = command.get_help(ctx)
    assert "?" not in text.replace("(?", ""), text  # no INT?/FLOAT?/STR? placeholders
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{name} --{param.name} has no help text"
            assert param.make_metavar(ctx) in text or param.is_flag


@pytest.mark.parametrize("args, expected", [
    (["train", "--model", "unetpp", "--epochs", "ten"], "Invalid value for '--epochs': expected an integer or 'preset', got 'ten'"),
    (["train", "--model", "unetpp", "--lr", "fast"], "Invalid value for '--lr': expected a float or 'preset', got 'fast'"),
    (["train", "--model", "unetpp", "--encoder-weights", "coco"], "Invalid value for '--encoder-weights': expected one of ['imagenet', 'none', 'preset'], got 'coco'"),
    (["train", "--model", "unetpp", "--img-size", "100"], "img_size must be a multiple of 32"),
    (["tune", "--n-trials", "0"], "Invalid value for '--n-trials'"),
])
def test_a_bad_parameter_names_itself_the_value_and_what_is_expected(tmp_path, args, expected):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-m", "potholes", *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert expected in out.stderr, out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run


def test_every_bad_training_parameter_of_one_command_is_named_at_once(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ["train", "--model", "deeplab", "--img-size", "100", "--lr", "-1", "--copy-paste", "2",
            "--loss", "dice_focal", "--small-pothole-weight", "3"]
    out = subprocess.run([sys.executable, "-m", "potholes", *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "4 problems in the training parameters:" in out.stderr, out.stderr
    for expected in ("- img_size must be a multiple of 32", "- lr must be > 0, got -1.0",
                     "- copy_paste must be a share from 0 to 1", "- small_pothole_weight weighs the pixels of loss"):
        assert expected in out.stderr, out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_every_bad_tune_range_is_named_at_once():
    from potholes.tuning.search import TuneConfig

    with pytest.raises(ConfigError) as refused:
        TuneConfig(n_trials=0, threshold_min=0.9, threshold_max=0.2, min_area_min=50, min_area_max=10).validate()
    message = str(refused.value)
    assert message.startswith("3 problems in the tune parameters:")
    assert "n_trials must be >= 1, got 0" in message and "got 0.9..0.2" in message and "got 50..10" in message


def test_the_words_mlproject_passes_for_unset_overrides_mean_unset():
    from potholes.cli_options import Maybe

    assert Maybe(int, "preset").convert("preset", None, None) is None
    assert Maybe(int, "preset").convert("", None, None) is None
    assert Maybe(int, "preset").convert("7", None, None) == 7
    assert Maybe(str, "latest").convert("latest", None, None) is None


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_csv_files_honour_the_umask_without_changing_it(tmp_path, umask, monkeypatch):
    old = os.umask(umask)
    try:
        # Another thread may create files meanwhile: the writer must never set the umask, even briefly.
        with monkeypatch.context() as patched:
            patched.setattr(os, "umask", lambda *_: pytest.fail("the process umask was changed"))
            path = write_csv_atomically(pd.DataFrame({"ImageId": ["a.jpg"], "rle": [""]}), tmp_path / "submission.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temporary file left


@pytest.mark.parametrize("raised, code", [(ValueError("a bug, not the user's"), 1), (KeyError("bug"), 1),
                                          (ConfigError("lr must be > 0, got -1"), 2),
                                          (DatasetError("train/images: empty folder"), 2)])
def test_only_user_errors_become_one_message_others_keep_their_traceback(synth_data, tracking_store, monkeypatch,
                                                                          raised, code):
    from click.testing import CliRunner

    import potholes.stages.prepare

    def stage(*args, **kwargs):
        raise raised

    monkeypatch.setattr(potholes.stages.prepare, "run_prepare", stage)
    result = CliRunner().invoke(cli, ["prepare", "--data-dir", str(synth_data)])
    assert result.exit_code == code
    if code == 2:
        assert f"error: {raised}" in result.output and result.exception.__class__ is SystemExit
    else:
        assert result.exception is raised  # not swallowed: the traceback reaches the user
