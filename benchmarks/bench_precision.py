"""Row 6b: one training step of the cpu preset in fp32 and in bf16 (autocast), side by side in one
process, same batch, same weights: seconds a step and the bf16 speed-up, per architecture.
`precision=auto` picks bf16 only on CPUs with bfloat16 units (AMX or AVX512-BF16); elsewhere bf16
is emulated and slower, which this script shows too when run there. The quality side of the
choice is row 6 (`bench_quality.py`)."""

from __future__ import annotations

import time

import torch

from common import parser, report
from potholes.budget import plan_training
from potholes.config import resolve_config
from potholes.train import autocast, criterion, init_state


def seconds_per_step(model: str, precision: str, img_size: int, steps: int) -> float:
    config = resolve_config(model, "cpu", encoder_weights="none", precision=precision, img_size=img_size)
    state = init_state(config, plan_training(train_images=64, batch_size=config.batch_size, steps=steps + 1),
                       torch.device("cpu"))
    loss_fn = criterion(config)
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, 3, img_size, img_size)
    x = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    y = (torch.rand((config.batch_size, 1, img_size, img_size), generator=generator) > 0.8).float()
    state.model.train()

    def step():
        state.optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            loss = loss_fn(state.model(x).float(), y)
        loss.backward()
        state.optimizer.step()

    step()  # first-call costs (oneDNN primitive creation) are paid once per run
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


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
