"""The registered model as an MLflow pyfunc: it loads the ensemble from the model's artifacts
(safetensors weights, ONNX graphs, the tuned config) and answers DataFrames of base64 images
through the request layer (`potholes.serving.requests`). A train run's LoggedModel is the same
pyfunc with one member's checkpoint as its only network."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from potholes.inference.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor


class PotholeEnsembleModel(mlflow.pyfunc.PythonModel):
    """Input: DataFrame column ``image`` (base64 JPEG/PNG). Output: one row per image with RLE,
    statistics and its potholes. Params ``threshold``, ``min_area`` and ``runtime`` override the
    tuned values and the runtime choice per request (see `potholes.serving.requests`)."""

    def load_context(self, context) -> None:
        config = EnsembleConfig.load(Path(context.artifacts["ensemble_config"]))
        dirs = {name: Path(context.artifacts[name]) for name in MEMBERS if name in context.artifacts}
        onnx_dir = context.artifacts.get("onnx")
        self.predictor = EnsemblePredictor.from_checkpoints(dirs, config, onnx_dir=onnx_dir and Path(onnx_dir))
        if onnx_dir is None and len(dirs) == len(MEMBERS) and self.predictor.device.type == "cpu":
            print("note: this model version has no ONNX graphs (registered before ONNX export); "
                  "runtime 'auto' runs torch. Run tune again to get the faster ONNX Runtime path.")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from potholes.serving.requests import predict_frame

        return predict_frame(self.predictor, model_input, params)
