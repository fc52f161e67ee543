"""The ensemble search and its registration: search space and objective over cached logits,
several workers on one Optuna study, the registered model, its code and its pins.
May import: data, inference, serving (to log the pyfunc), tracking, reporting, errors.
"""
