"""Files to arrays: reading images and masks (in display orientation), the dataset layout and its
checks, the manifest and split, dataset statistics and the synthetic set. No torch, no MLflow.
May import: potholes.errors.
"""
