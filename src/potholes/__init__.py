"""potholes: pothole segmentation as a tracked MLflow pipeline."""

import os

# albumentations checks PyPI for a newer release on import; nothing here may phone home.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
