"""Benchmarks that print ratios measured side by side in one run (ours vs the baseline, same machine).

Run one with ``python -m benchmarks.<name> [--quick] [--device cpu|cuda] [--json OUT]`` from the
repository root, or all with ``python -m benchmarks.run_all``. Every result line reads
``RATIO <name> = <value>  (target >= X)  [parts: a=..., b=...]``.
"""
