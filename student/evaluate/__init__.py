"""Evaluation: streaming metrics, scoring a run's student, plots."""
