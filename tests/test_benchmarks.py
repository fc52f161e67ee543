"""Each benchmark's --quick mode runs once in CI, so the scripts cannot rot."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, cli_env

SCRIPTS = {
    "bench_postprocess.py": ("postprocess", lambda r: all(row["same_output"] for row in r["rows"])),
    "bench_tune.py": ("tune", lambda r: r["rows"][0]["speedup"] > 1),
    "bench_predict.py": ("predict", lambda r: r["rows"][0]["predict_img_per_s"] > 0),
    "bench_loader.py": ("loader", lambda r: r["rows"][0]["loader_img_per_s"] > 0),
    "bench_serving.py": ("serving", lambda r: [row["clients"] for row in r["rows"]] == [1, 8, 32]
                         and all(row["errors"] == 0 and row["rss_mb_after"] > 0 for row in r["rows"])),
    "bench_runtime.py": ("runtime", lambda r: r["rows"][0]["runtime_vs_torch"] > 0
                         and r["rows"][0]["mask_dice_mean"] >= 0.995 and r["rows"][0]["gflop_per_image"] > 0),
    "bench_quality.py": ("quality", lambda r: 0 <= r["rows"][0]["test_dice"] <= 1 and r["rows"][0]["dataset"] == "synthetic"
                         and r["datasets"]["synthetic"]["test_dice_mean"] == r["rows"][0]["test_dice"]),
    "bench_recipes.py": ("recipes", lambda r: [row["candidate"] for row in r["rows"]] == ["base", "geo_strong"]
                         and all(len(row["val_dice"]) == 2 and row["val_dice_spread"] >= 0 for row in r["rows"])
                         and r["rows"][1]["vs_base_pairs"] == [g - b for g, b in zip(r["rows"][1]["val_dice"],
                                                                                    r["rows"][0]["val_dice"])]),
    "bench_precision.py": ("precision", lambda r: [row["model"] for row in r["rows"]] == ["unetpp", "deeplab"]
                           and all(row[f"{p}_freeze{f}_s_per_step"] > 0 for row in r["rows"]
                                   for p in ("fp32", "bf16") for f in (0, 8))),
    "bench_tta.py": ("tta", lambda r: len(r["rows"]) == 6 and all(0 <= row["val_dice"] <= 1 for row in r["rows"])
                     and r["rows"][0]["vs_ours"] == 0
                     and [m["n_members"] for m in r["members"]] == [1, 1, 2] and r["members"][2]["product_pair"]),
    "bench_gpu.py": ("gpu", lambda r: r["rows"][0]["variant"] == "full_lite2" and 0 <= r["rows"][0]["test_dice"] <= 1
                     and all(t["encoder"] == "tu-tf_efficientnet_lite2" and t["img_size"] == "64"
                             and t["mean"] == "0.5,0.5,0.5" for t in r["rows"][0]["trained"].values())),
    "bench_served_model.py": ("served_model", lambda r: [row["model"] for row in r["rows"]] == ["before", "after"]
                              and r["rows"][1]["pinned_packages"] < r["rows"][0]["pinned_packages"]
                              and r["rows"][1]["shipped_py_files"] < r["rows"][0]["shipped_py_files"]),
    "bench_predict_memory.py": ("predict_memory", lambda r: r["rows"][0]["large_images"] == 10 * r["rows"][0]["small_images"]
                                and r["rows"][0]["large_peak_rss_mb"] > 100 and r["rows"][0]["small_peak_rss_mb"] > 100),
    "bench_tune_workers.py": ("tune_workers", lambda r: r["rows"][0]["trials"] == 20
                              and r["rows"][0]["trials_run"].split(" / ")[0] == "20"),
    "bench_contention.py": ("contention", lambda r: [row["setting"] for row in r["rows"]]
                            == ["default", "OMP_PROC_BIND=false", "predict runtime=openvino"]
                            and [row["bound"] for row in r["rows"][:2]] == [r["cores"] > 1, False]
                            and all(row["threads"] == r["cores"] for row in r["rows"])),
    "bench_crops.py": ("crops", lambda r: (r["rows"][0]["img_size"], r["rows"][0]["crop_size"]) == (512, 256)
                       and 0 <= r["rows"][0]["random_crops_with_pothole"] <= r["rows"][0]["images_with_pothole"]
                       and r["rows"][0]["pothole_crops"] == 0.5),
    "bench_scale.py": ("scale", lambda r: r["rows"][0]["train_pairs"] == 30 and r["rows"][0]["wall_seconds"] > 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_quick_mode(script, tmp_path):
    name, check = SCRIPTS[script]
    out = tmp_path / f"{name}.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=cli_env(tmp_path), cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["machine"]["nproc"] >= 1
    assert check(result), result["rows"]


@pytest.fixture
def bench_recipes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_recipes

    yield bench_recipes
    bench_recipes.use_architecture(None)


def feature_sides(model, side: int = 256) -> list[int]:
    import torch

    with torch.no_grad():
        return [f.shape[-1] for f in model.encoder(torch.zeros(1, 3, side, side))]


@pytest.mark.parametrize("candidate, arch, changed, stock", [
    ("os8", "deeplab", [256, 128, 64, 32, 32, 32], [256, 128, 64, 32, 16, 16]),
    ("depth4", "unetpp", [256, 128, 64, 32, 16], [256, 128, 64, 32, 16, 8]),
])
def test_architecture_candidates_change_the_encoder_then_restore_it(bench_recipes, candidate, arch, changed, stock):
    """bench_recipes' os8 / depth4 rows measure what they claim: the product's own build_model gives
    the changed network while the candidate is on, and smp's stock one again after."""
    import torch

    from potholes.training.models import LITE0, build_model

    bench_recipes.use_architecture(bench_recipes.ARCHITECTURE_KWARGS[candidate])
    model = build_model(arch, LITE0, None).eval()
    assert feature_sides(model) == changed
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 256, 256)).shape[-2:] == (256, 256)
    bench_recipes.use_architecture(None)
    assert feature_sides(build_model(arch, LITE0, None)) == stock
