"""Models-from-code entry for the registered ensemble: MLflow executes this file to get the
model object, so nothing is pickled (weights load from safetensors, graphs from ONNX files, in
load_context)."""

from mlflow.models import set_model

from potholes.serving.pyfunc import PotholeEnsembleModel

set_model(PotholeEnsembleModel())
