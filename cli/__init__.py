"""Thin Typer front-ends over the library: `sak-cache` and `sak-train`."""
