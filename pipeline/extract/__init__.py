"""Extraction: run each teacher once over indexed datasets, one segment per task, in-process or on dask."""
