"""Datasets and images: layouts, manifests, decoding, labels, replayable augmentation, procedural demo data."""
