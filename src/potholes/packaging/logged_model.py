"""Log a predictor as a models-from-code pyfunc: nothing pickled, the served code and pins only.

Both the tuned ensemble (`potholes.tuning.registry`) and each train run's best member
(`potholes.stages.train`) go through `log_pyfunc`, so `mlflow.pyfunc.load_model` and
`mlflow models serve` treat them alike."""

from __future__ import annotations

import base64
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from potholes.packaging import model_package


def example_frames(predictor, example_image: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A request of one real image (base64, as clients send it) and the predictor's answer to it."""
    from potholes.data.dataset import read_image
    from potholes.serving.requests import row_record

    request = pd.DataFrame({"image": [base64.b64encode(Path(example_image).read_bytes()).decode("ascii")]})
    answer = pd.DataFrame([row_record(*predictor.predict([read_image(example_image)], runtime="torch")[0])])
    return request, answer


def log_pyfunc(predictor, artifacts: dict[str, Path], example_image: Path, name: str,
               model_id: str | None = None, registered_model: str | None = None, step: int = 0):
    """Log ``predictor``'s model (its config is written as the ``ensemble_config`` artifact beside
    ``artifacts``) as a new LoggedModel, registered when ``registered_model`` is given, and return
    MLflow's ModelInfo; or, with ``model_id``, into that LoggedModel (a train run's, created when
    the run began) as the active run's output at ``step``, and return None."""
    import mlflow
    from mlflow.models import infer_signature

    config = predictor.config
    request, answer = example_frames(predictor, example_image)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = config.save(Path(tmp) / "ensemble_config.json")
        code = model_package.stage_code(Path(tmp) / "code")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hint on integer output columns
            signature = infer_signature(request, answer, params={"threshold": float(config.threshold),
                                                                 "min_area": int(config.min_area),
                                                                 "runtime": "auto"})
            model = dict(
                python_model=str(model_package.MODEL_FILE),
                artifacts={"ensemble_config": str(config_path), **{k: str(v) for k, v in artifacts.items()}},
                code_paths=[str(code)],  # the serving code alone, not the training pipeline
                signature=signature,
                input_example=request,
                pip_requirements=model_package.serve_requirements(model_package.pinned_requirements()))
            if model_id is None:
                return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model, **model)
            # `log_model(model_id=...)` would also copy the run's metrics of ``step`` onto the model,
            # which has them already (they were logged with its model_id): MLflow then fails on the
            # duplicates. Saving and uploading is the same model without that copy.
            _save_into(model_id, Path(tmp) / "model", step, **model)
    return None


def _save_into(model_id: str, folder: Path, step: int, **model) -> None:
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = mlflow.MlflowClient()
    logged = client.get_logged_model(model_id)
    run_id = mlflow.active_run().info.run_id
    mlflow.pyfunc.save_model(str(folder), mlflow_model=Model(artifact_path=logged.artifact_location,
                                                             model_uuid=model_id, run_id=run_id, model_id=model_id),
                             **model)
    client.log_model_artifacts(model_id, str(folder))
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
