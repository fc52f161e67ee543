"""The ensemble search and its registration: which train runs it blends, search space and
objective over cached logits, several workers on one Optuna study, what tune logs of its best
trial, and the registered model and its aliases.
May import: data, inference, packaging (to log the pyfunc), tracking, reporting, errors.
"""
