"""Row 6b: one training step of the cpu preset in fp32 and in bf16 (autocast), side by side in one
process, same batch, same weights: seconds a step and the bf16 speed-up, per architecture.
`precision=auto` picks bf16 only on CPUs with bfloat16 units (AMX or AVX512-BF16); elsewhere bf16
is emulated and slower, which this script shows too when run there. The quality side of the
choice is row 6 (`bench_quality.py`)."""

from __future__ import annotations

from common import parser, report, seconds_per_train_step
from potholes.config import resolve_config


def seconds_per_step(model: str, precision: str, img_size: int, steps: int) -> float:
    config = resolve_config(model, "cpu", encoder_weights="none", precision=precision, img_size=img_size)
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
        fp32 = seconds_per_step(model, "fp32", args.img_size, args.steps)
        bf16 = seconds_per_step(model, "bf16", args.img_size, args.steps)
        rows.append({"model": model, "img_size": args.img_size, "fp32_s_per_step": fp32, "bf16_s_per_step": bf16,
                     "bf16_speedup": fp32 / bf16})
        print(f"{model}: fp32 {fp32:.2f} s/step, bf16 {bf16:.2f} s/step, {fp32 / bf16:.2f}x", flush=True)
    auto = resolve_config("unetpp", "cpu")
    report("precision", rows, {"auto_on_this_machine": auto.precision, "why": auto.preset_reason,
                               "steps": args.steps}, args)


if __name__ == "__main__":
    main()
