"""Rows 6b and 6d: one training step of the cpu preset in fp32 and in bf16 (autocast), with every
encoder layer trained and with the encoder frozen up to stride 8 (the preset's `freeze_stride`),
side by side in one process, same batch: seconds a step, the bf16 speed-up and the freezing
speed-up, per architecture. `precision=auto` picks bf16 only on CPUs with bfloat16 units (AMX or
AVX512-BF16); elsewhere bf16 is emulated and slower, which this script shows too when run there.
The quality side of both choices is row 6 (`bench_quality.py`)."""

from __future__ import annotations

from common import parser, report, seconds_per_train_step

from potholes.training.config import resolve_config


def seconds_per_step(model: str, precision: str, img_size: int, steps: int, freeze_stride: int) -> float:
    # freezing needs the pretrained encoder (offline Lite0 weights); speed does not depend on them
    config = resolve_config(model, "cpu", encoder_weights="imagenet" if freeze_stride else "none",
                            precision=precision, img_size=img_size, freeze_stride=freeze_stride)
    return seconds_per_train_step(config, steps, precision)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    if args.quick:
        args.steps, args.img_size = 1, 64
    rows = []
    for model in ("unetpp", "deeplab"):
        row = {"model": model, "img_size": args.img_size}
        for precision in ("fp32", "bf16"):
            for freeze in (0, 8):
                row[f"{precision}_freeze{freeze}_s_per_step"] = seconds_per_step(model, precision, args.img_size,
                                                                                 args.steps, freeze)
        row["bf16_speedup"] = row["fp32_freeze0_s_per_step"] / row["bf16_freeze0_s_per_step"]
        for precision in ("fp32", "bf16"):
            row[f"{precision}_freeze_speedup"] = (row[f"{precision}_freeze0_s_per_step"]
                                                  / row[f"{precision}_freeze8_s_per_step"])
        rows.append(row)
        print(f"{model}: all layers trained: fp32 {row['fp32_freeze0_s_per_step']:.2f} s/step, bf16 "
              f"{row['bf16_freeze0_s_per_step']:.2f} s/step ({row['bf16_speedup']:.2f}x) | frozen to stride 8: "
              f"fp32 {row['fp32_freeze8_s_per_step']:.2f} s/step ({row['fp32_freeze_speedup']:.2f}x), bf16 "
              f"{row['bf16_freeze8_s_per_step']:.2f} s/step ({row['bf16_freeze_speedup']:.2f}x)", flush=True)
    auto = resolve_config("unetpp", "cpu")
    report("precision", rows, {"auto_on_this_machine": auto.precision, "why": auto.preset_reason,
                               "steps": args.steps}, args)


if __name__ == "__main__":
    main()
