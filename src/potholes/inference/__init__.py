"""Masks from images: the ensemble with flip TTA, the model shape of a photo, post-processing, pothole instances, the runtime
choice and the ONNX Runtime / OpenVINO / torch paths, and ONNX export. Ships inside every
registered model. May import: data.images, data.problems, errors. Never training code, Optuna,
scikit-learn, matplotlib, Spark or MLflow.
"""
