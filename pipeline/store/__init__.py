"""The feature store: spec, Zarr v3 segments and shards, Parquet commit records, stats, maintenance."""
