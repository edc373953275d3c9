"""The SAK student: model, losses, metrics, cached-target data, trainer."""
