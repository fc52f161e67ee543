"""The ONNX Runtime and OpenVINO paths of the registered ensemble: stored graphs, same masks as
torch, and the fallback for model versions registered before ONNX export."""

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from potholes.data.dataset import read_image
from potholes.inference.geometry import model_hw, resize_batch
from potholes.inference.openvino import OpenVinoMembers, native_bf16
from potholes.inference.postprocess import dice_score
from potholes.inference.runtime import resolve_runtime
from potholes.serving.params import ParamError
from potholes.stages.predict import PredictConfig, run_predict

CHAMPION = "models:/pothole-ensemble@champion"


def wide_and_square(data: Path, predictor) -> list[np.ndarray]:
    """The square test photos and wide strips of two of them: the graphs take any model shape."""
    images = [read_image(p) for p in sorted((data / "test" / "images").iterdir())]
    wide = [image[:40] for image in images[:2]]
    assert model_hw(wide[0].shape[:2], predictor.config.img_size) == (32, 96)  # a rectangle at model size
    return images + wide


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
    assert predictor.runtime == ("openvino" if native_bf16() else "onnx")  # auto on a CPU-only machine with graphs
    images = wide_and_square(in_smoke_store.data, predictor)
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


def test_openvino_runs_the_stored_graphs_with_torch_masks(in_smoke_store):
    """runtime=openvino compiles the registered ONNX graphs (fp32 encoder, bf16 decoder where the CPU
    has native bf16) and its masks match torch's like ONNX Runtime's do."""
    predictor = mlflow.pyfunc.load_model(CHAMPION).unwrap_python_model().predictor
    images = wide_and_square(in_smoke_store.data, predictor)
    torch_out = predictor.predict(images, runtime="torch")
    openvino_out = predictor.predict(images, runtime="openvino")
    dice = [dice_score(a[0], b[0]) for a, b in zip(torch_out, openvino_out)]
    assert np.mean(dice) >= 0.995, dice
    assert sum(a[0].sum() for a in torch_out) > 0
    members = predictor.openvino.members
    assert set(members) == {"unetpp", "deeplab"}
    if native_bf16():  # split at the encoder's outputs: the encoder in fp32, the decoder in bf16
        assert predictor.openvino.decoder_precision == "bf16"
        assert all(m.encoder is not None and len(m.decoder_inputs) > 1 for m in members.values())
    again = predictor.predict(images, runtime="openvino")
    for (mask, found), (mask2, found2) in zip(openvino_out, again):
        np.testing.assert_array_equal(mask, mask2)
        assert found == found2

    # All fp32 (the path on CPUs without native bf16): the same logits as ONNX Runtime.
    fp32 = OpenVinoMembers(predictor.onnx.folder, decoder_precision="f32")
    batch = resize_batch(images[:2], int(predictor.config.members["unetpp"]["img_size"]))
    np.testing.assert_allclose(fp32.logits("unetpp", batch), predictor.onnx.logits("unetpp", batch), atol=1e-3)


def test_openvino_runtime_choice():
    assert resolve_runtime("auto", has_onnx=True, cuda=False, openvino=True) == "openvino"
    assert resolve_runtime("auto", has_onnx=True, cuda=False, openvino=False) == "onnx"
    assert resolve_runtime("auto", has_onnx=True, cuda=True, openvino=True) == "torch"
    assert resolve_runtime("openvino", has_onnx=True, cuda=True) == "openvino"
    with pytest.raises(ParamError, match="param 'runtime': got 'openvino'.*no ONNX graphs"):
        resolve_runtime("openvino", has_onnx=False, cuda=False)
