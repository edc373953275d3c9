"""Training: the run config, setup, losses, schedules, checkpoints and the training loop."""
