"""One module per MLproject entry point (prepare, train, tune, predict, main): the only code that
starts MLflow runs. A stage reads the data (`stage_data`: the manifest prepare logged, each file
decoded once), calls the pure parts below it and logs what they return.
May import every other subpackage; nothing imports a stage but the CLI and the main stage.
"""
