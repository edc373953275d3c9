"""Teachers, image decoding, datasets, the Zarr feature store and the extraction runner."""
