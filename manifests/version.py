"""The installed version of sak (from the distribution metadata, so there is one source: pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sak")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
