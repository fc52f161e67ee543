"""Row 3: tune. Ours computes both networks' TTA logits once and blends them per trial; the seed's
objective re-runs both networks (four single-image forwards per image) in every trial."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from common import parser, report, tune_inputs
from seed_way import seed_tta_logits

from potholes.inference import postprocess as pp
from potholes.tuning.search import make_objective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seed-trials", type=int, default=2, help="seed-side trials actually run (then extrapolated)")
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    if args.quick:
        args.trials, args.seed_trials, args.img_size = 10, 1, 128
    with tempfile.TemporaryDirectory() as tmp:
        images, masks, predictor, space = tune_inputs(args, Path(tmp), args.img_size)

        start = time.perf_counter()
        logits = predictor.member_logit_arrays(list(images))
        logits_pass = time.perf_counter() - start
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
        study.optimize(make_objective(logits, masks, space), n_trials=args.trials)
        ours = time.perf_counter() - start

        models = [predictor.models["unetpp"], predictor.models["deeplab"]]
        mean, std = predictor.config.members["unetpp"]["mean"], predictor.config.members["unetpp"]["std"]

        def seed_objective(trial: optuna.Trial) -> float:
            w = trial.suggest_float("w_unetpp", 0, 1)
            threshold = trial.suggest_float("threshold", 0.30, 0.45)
            min_area = trial.suggest_int("min_area", *space.min_area)
            scores = []
            for image, mask in zip(images, masks):
                lu, ld = seed_tta_logits(models, image, args.img_size, mean, std)
                prob = pp.sigmoid(w * lu + (1 - w) * ld)
                scores.append(pp.dice_score(pp.remove_small_components(prob > threshold, min_area), mask))
            return float(np.mean(scores))

        seed_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
        start = time.perf_counter()
        seed_study.optimize(seed_objective, n_trials=args.seed_trials)
        seed_per_trial = (time.perf_counter() - start) / args.seed_trials
        seed = seed_per_trial * args.trials
    rows = [{"row": "3 tune", "val_images": len(images), "img_size": args.img_size, "trials": args.trials,
             "ours_s": ours, "ours_logits_pass_s": logits_pass, "ours_ms_per_trial": (ours - logits_pass) / args.trials * 1e3,
             "seed_s_extrapolated": seed, "seed_s_per_trial": seed_per_trial, "seed_trials_run": args.seed_trials,
             "speedup": seed / ours, "target": ">= 30x"}]
    report("tune", rows, {"note": f"seed side ran {args.seed_trials} trial(s), extrapolated linearly to {args.trials}"}, args)


if __name__ == "__main__":
    main()
