"""The ONNX Runtime path of the registered ensemble: stored graphs, same masks as torch, and the
fallback for model versions registered before ONNX export."""

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from potholes.data import read_image
from potholes.params import ParamError
from potholes.postprocess import dice_score
from potholes.predict import PredictConfig, run_predict

CHAMPION = "models:/pothole-ensemble@champion"


def test_tune_stores_checked_onnx_graphs_and_they_give_torch_masks(in_smoke_store):
    model_dir = Path(mlflow.artifacts.download_artifacts(CHAMPION))
    stored = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    graphs = model_dir / stored["onnx"]["path"]
    manifest = json.loads((graphs / "manifest.json").read_text())
    assert set(manifest["members"]) == {"unetpp", "deeplab"}
    for name, entry in manifest["members"].items():
        onnx.checker.check_model(str(graphs / entry["file"]), full_check=True)
        assert (model_dir / stored[name]["path"] / "model.safetensors").is_file()  # beside the checkpoints
        assert entry["max_abs_logit_diff"] < 1e-3
    signature = mlflow.models.get_model_info(CHAMPION).signature
    assert {p.name: p.default for p in signature.params.params}["runtime"] == "auto"
    assert "potholes" in signature.outputs.input_names()

    predictor = mlflow.pyfunc.load_model(CHAMPION).unwrap_python_model().predictor
    assert predictor.runtime == "onnx"  # auto on a CPU-only machine with graphs
    images = [read_image(p) for p in sorted((in_smoke_store.data / "test" / "images").iterdir())]
    torch_out = predictor.predict(images, runtime="torch")
    onnx_out = predictor.predict(images, runtime="onnx")
    dice = [dice_score(a[0], b[0]) for a, b in zip(torch_out, onnx_out)]
    assert np.mean(dice) >= 0.995, dice
    assert sum(a[0].sum() for a in torch_out) > 0  # not two empty outputs agreeing
    again = predictor.predict(images, runtime="onnx")  # same input, same output
    for (mask, found), (mask2, found2) in zip(onnx_out, again):
        np.testing.assert_array_equal(mask, mask2)
        assert found == found2


def without_onnx(tmp_path: Path) -> Path:
    """A copy of the champion as a version registered before ONNX export looked: no graphs."""
    model_dir = Path(shutil.copytree(mlflow.artifacts.download_artifacts(CHAMPION), tmp_path / "old_model"))
    shutil.rmtree(model_dir / "artifacts" / "onnx")
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    del mlmodel["flavors"]["python_function"]["artifacts"]["onnx"]
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return model_dir


def test_models_without_onnx_fall_back_to_torch_or_fail_clearly(in_smoke_store, tmp_path, capsys):
    old = without_onnx(tmp_path)
    predictor = mlflow.pyfunc.load_model(str(old)).unwrap_python_model().predictor
    assert "no ONNX graphs" in capsys.readouterr().out
    assert predictor.onnx is None and predictor.runtime == "torch"
    with pytest.raises(ParamError, match="param 'runtime': got 'onnx'.*no ONNX graphs.*run tune again"):
        predictor.predict_masks([np.zeros((32, 32, 3), np.uint8)], runtime="onnx")

    output = tmp_path / "sub.csv"
    result = run_predict(str(in_smoke_store.data), PredictConfig(model_uri=str(old), output=str(output)),
                         progress=False)
    assert result["runtime"] == "torch" and output.is_file()
    new = run_predict(str(in_smoke_store.data), PredictConfig(output=str(tmp_path / "new.csv"), runtime="onnx"),
                      progress=False)
    assert new["runtime"] == "onnx"
    old_rows = pd.read_csv(output, keep_default_na=False)
    new_rows = pd.read_csv(tmp_path / "new.csv", keep_default_na=False)
    assert old_rows["ImageId"].tolist() == new_rows["ImageId"].tolist()

    failing = tmp_path / "never.csv"
    with pytest.raises(ValueError, match="param 'runtime': got 'onnx'"):
        run_predict(str(in_smoke_store.data), PredictConfig(model_uri=str(old), output=str(failing), runtime="onnx"),
                    progress=False)
    assert not failing.exists()
