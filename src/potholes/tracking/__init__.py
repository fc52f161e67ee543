"""MLflow at the edges: the store, experiments, stage runs, the manifest dataset, process
liveness of runs, and URLs with their passwords masked. May import: errors, reporting.
"""
