"""Training: setup, losses, schedules, the trainer's parts and the training loop (the run dir itself is in ``runs``)."""
