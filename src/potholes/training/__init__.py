"""Training one network: its config and presets, the loader, augmentations, losses, the step
budget and schedule, pretrained encoders, the loop, resume points, distributed processes and
the binding of training threads to cores.
May import: data, inference (networks, normalisation), tracking, reporting, errors.
"""
