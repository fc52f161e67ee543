"""Row 12: `tune --workers`. The same 400-trial search (TPE, the default search space, the real
validation split's logits of two members computed once) run by one worker and by two worker
threads of one process sharing those logits (`potholes.tuning.workers.run_trials`, Optuna's
``n_jobs``), each on a fresh SQLite study as `tune` uses by default. The row is their wall-time
ratio and the best Dice each found."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import optuna
from common import parser, report, tune_inputs

from potholes.tuning import workers as shared
from potholes.tuning.search import make_objective

optuna.logging.set_verbosity(optuna.logging.WARNING)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--img-size", type=int, default=256)
    args = p.parse_args()
    if args.quick:
        args.trials, args.img_size = 20, 64
    with tempfile.TemporaryDirectory() as tmp:
        images, masks, predictor, space = tune_inputs(args, Path(tmp), args.img_size)
        logits = predictor.member_logit_arrays(list(images))
        measured = {}
        for workers in (1, 2):
            study, _ = shared.open_study(f"workers-{workers}", f"sqlite:///{Path(tmp) / f'study{workers}.db'}")
            study.sampler = optuna.samplers.TPESampler(seed=0)
            start = time.perf_counter()
            ran = shared.run_trials(study, make_objective(logits, masks, space), args.trials, [], n_jobs=workers)
            measured[workers] = (time.perf_counter() - start, ran, study.best_value)
    (one_s, one_ran, one_best), (two_s, two_ran, two_best) = measured[1], measured[2]
    rows = [{"row": "12 tune workers", "val_images": len(images), "img_size": args.img_size, "trials": args.trials,
             "one_worker_s": one_s, "two_workers_s": two_s, "speedup": one_s / two_s, "target": "> 1",
             "trials_run": f"{one_ran} / {two_ran}", "best_dice": f"{one_best:.4f} / {two_best:.4f}"}]
    report("tune_workers", rows, {}, args)


if __name__ == "__main__":
    main()
