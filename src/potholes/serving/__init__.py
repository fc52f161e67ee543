"""The registered model's face: the pyfunc, its models-from-code file, the request contract
(rows of base64 images, limits, answers) and per-request params. Ships inside every registered
model. May import: inference, data.images, data.problems, errors, and MLflow's pyfunc API.
"""
