"""A training run's own layer, below evaluate and train: its config record, run directory, checkpoints and process runtime."""
