"""Where bytes live: local directories and fsspec URLs (s3://, gs://, memory://) behind one interface.

``base`` the :class:`Location` interface, ``local`` and ``remote`` its two implementations,
``location`` the :func:`as_location` factory, ``parquet`` validated Parquet reads and atomic writes.
"""

from .base import ByteRanges, Location, ReadOnlyStorage, Stat
from .local import LocalLocation, ReadOnlyLocalLocation
from .location import as_location
from .parquet import read_parquet, read_parquet_with_metadata, write_parquet_atomic
from .remote import FsspecLocation

__all__ = [
    "ByteRanges", "FsspecLocation", "LocalLocation", "Location", "ReadOnlyLocalLocation", "ReadOnlyStorage", "Stat",
    "as_location", "read_parquet", "read_parquet_with_metadata", "write_parquet_atomic",
]
