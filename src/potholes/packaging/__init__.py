"""What a logged model is made of: the served code (the import closure of the models-from-code
file), its pins, its signature and example, and logging it as an MLflow pyfunc. The ensemble
`tune` registers and each member a `train` run logs are made the same way.
May import: serving, inference, data, errors, and MLflow's model API.
"""
