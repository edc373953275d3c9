"""Training data: feature stores joined with dataset splits, block-shuffle sampling, prefetch, view replay."""
