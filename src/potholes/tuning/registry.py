"""The model registry: log the tuned ensemble as a models-from-code pyfunc, register it, and
move the ``champion`` alias only to a better version."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from potholes.inference.ensemble import MEMBERS, EnsembleConfig, EnsemblePredictor

CHAMPION, CHALLENGER = "champion", "challenger"
REGISTERED_MODEL_DESCRIPTION = (
    "Pothole segmentation of road photos: a UNet++ + DeepLabV3+ ensemble (logit blend, flip TTA) "
    "tuned by the potholes MLflow Project. Input: DataFrame column 'image' of base64 JPEG/PNG. "
    "Output per image: Kaggle RLE mask at the image's size, pothole statistics and each pothole. "
    "Alias 'champion' = best validation Dice so far on the same validation data (dataset digest); "
    "'challenger' = the newest version that did not beat it; versions tuned on other data are not compared. "
    "Each version's description is its model card (data digest, member runs, tuned values, Dice).")
REGISTERED_MODEL_TAGS = {"task": "binary segmentation", "domain": "road maintenance: potholes",
                         "metric": "Dice (mean per image, validation split)", "project": "potholes"}


NOT_COMPARED_TAG = "potholes.not_compared"


def champion_of(registered_model: str):
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None


def promote(registered_model: str, version: str, val_dice: float, digest: str | None = None,
            force: bool = False, settle_s: float = 0.5) -> str | None:
    """Move ``champion`` to the new version when it beats the current champion's validation Dice
    measured on the same validation data (the same dataset digest); else it gets ``challenger``.

    A version tuned on other data is not compared at all (a Dice on synthetic blobs says nothing
    against one on road photos): it gets no alias, a ``potholes.not_compared`` tag and a printed
    note saying why. ``force`` (``tune --promote``) makes the new version champion regardless.

    A concurrent twin (another tune promoting at the same moment) may move the alias between our
    read and our write: after moving it, the champion is read again (``settle_s`` later) and the
    move repeated while a worse version holds it, so the better of the two ends as champion.
    Returns the alias given, or None."""
    client = MlflowClient()
    current = champion_of(registered_model)
    if force or current is None:
        client.set_registered_model_alias(registered_model, CHAMPION, version)
        return CHAMPION
    if current.tags.get("dataset_digest") != digest:
        reason = (f"validation Dice {val_dice:.4f} was measured on other data (dataset digest {digest}) than "
                  f"champion version {current.version}'s (digest {current.tags.get('dataset_digest')}), so the two "
                  f"were not compared")
        client.set_model_version_tag(registered_model, version, NOT_COMPARED_TAG, reason)
        print(f"note: {registered_model} version {version} stays without an alias: its {reason}; "
              f"tune --promote (-P promote=true) makes it champion anyway", flush=True)
        return None
    for _ in range(10):  # bounded: each round a twin can only have put a better version in
        if str(current.version) == str(version):
            return CHAMPION
        if val_dice <= float(current.tags.get("val_dice", "-inf")) or current.tags.get("dataset_digest") != digest:
            client.set_registered_model_alias(registered_model, CHALLENGER, version)
            return CHALLENGER
        client.set_registered_model_alias(registered_model, CHAMPION, version)
        time.sleep(settle_s)
        current = champion_of(registered_model) or current
    return CHAMPION


def model_card(config: EnsembleConfig, val_dice: float, base: dict, digest: str, runs: dict) -> str:
    members = ", ".join(f"{name}: {config.members[name]['encoder']} @ {config.members[name]['img_size']}px "
                        f"(run {runs[name]})" for name in MEMBERS)
    return (f"Pothole segmentation ensemble (UNet++ + DeepLabV3+, logit blend, horizontal-flip TTA).\n"
            f"Data: manifest digest {digest}. Models: {members}.\n"
            f"Tuned: w_unetpp={config.w_unetpp:.3f}, threshold={config.threshold:.3f}, "
            f"min_area={config.min_area}px at {config.img_size}px.\n"
            f"Validation Dice {val_dice:.4f} (UNet++ alone {base['baseline_unetpp_dice']:.4f}, "
            f"DeepLabV3+ alone {base['baseline_deeplab_dice']:.4f}, 50/50@0.4 {base['baseline_blend50_dice']:.4f}).\n"
            f"Input: DataFrame column 'image' = base64 JPEG/PNG; output: rle, height, width, pothole_pixels, "
            f"pothole_fraction, num_potholes, potholes (JSON list); params threshold, min_area, runtime "
            f"(auto | onnx | openvino | torch; ONNX graphs of both members are stored with the model).")


def log_and_register(predictor: EnsemblePredictor, checkpoint_dirs: dict[str, Path], example_image: Path,
                     registered_model: str, val_dice: float, base: dict, digest: str, runs: dict,
                     force_champion: bool = False) -> dict:
    from potholes.inference.export import export_members
    from potholes.packaging.logged_model import log_pyfunc

    config = predictor.config
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = export_members(predictor, Path(tmp) / "onnx")  # checked against torch before it is stored
        info = log_pyfunc(predictor, {"onnx": onnx_dir, **checkpoint_dirs}, example_image, "ensemble",
                          registered_model=registered_model)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {"val_dice": f"{val_dice:.6f}", "dataset_digest": digest,
                       "unetpp_run": runs["unetpp"], "deeplab_run": runs["deeplab"]}.items():
        client.set_model_version_tag(registered_model, version, key, value)
    client.update_model_version(registered_model, version, description=model_card(config, val_dice, base, digest, runs))
    # The registered model itself (what the Models page lists), not only each version.
    client.update_registered_model(registered_model, description=REGISTERED_MODEL_DESCRIPTION)
    for key, value in REGISTERED_MODEL_TAGS.items():
        client.set_registered_model_tag(registered_model, key, value)
    mlflow.log_metric("best_val_dice", val_dice, model_id=info.model_id)  # shown beside the LoggedModel
    alias = promote(registered_model, version, val_dice, digest, force=force_champion)
    return {"version": version, "alias": alias, "model_uri": info.model_uri}
