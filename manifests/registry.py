"""One registry mechanism for every extension point (teachers, tasks): names -> entries, plugins via entry points.

Like zarr-python's ``registry.py`` and timm's model registry: built-ins register themselves
with a decorator or :meth:`Registry.register`; third-party packages add entries through a
``[project.entry-points."<group>"]`` table, loaded lazily on the first lookup that needs
them (an entry point's object is registered under the entry point's name). A name
registered twice is a programming error unless ``replace=True``. Lookups of unknown names
raise :class:`ConfigError` listing the known ones, so a typo is a one-line fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order (built-ins first, then plugins)."""

    def __init__(self, kind: str, *, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}  # name -> "built-in" or "plugin <distribution> (<module:object>)"
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str, entry: T, *, replace: bool = False, origin: str = "built-in") -> T:
        """Add ``entry`` under ``name``; returns it (so it can be used as an expression). ``origin``: who registered it."""
        if not name or not isinstance(name, str):
            raise ConfigError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ConfigError(f"{self.kind} {name!r} is registered twice; pass replace=True to override it on purpose")
        self._entries[name] = entry
        self._origins[name] = origin
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def deco(entry: T) -> T:
            return self.register(name, entry)

        return deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # set first: a plugin that looks names up must not recurse
        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                log.warning("%s plugin %s (%s) is ignored: a built-in %s has that name", self.kind, ep.name, ep.value, self.kind)
                continue
            dist = getattr(ep, "dist", None)
            origin = f"plugin {dist.name if dist is not None else '?'} ({ep.value})"
            try:
                self.register(ep.name, ep.load(), origin=origin)
            except Exception as exc:  # a broken plugin must not break the built-ins
                log.warning("%s plugin %s (%s) failed to load and is skipped: %s", self.kind, ep.name, ep.value, exc)

    def get(self, name: str) -> T:
        """The entry called ``name``, or :class:`ConfigError` naming the known ones."""
        if name not in self._entries:
            self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load_plugins()
        return name in self._entries

    def origin(self, name: str) -> str:
        """Who registered ``name``: ``built-in`` (this package, or code that called :meth:`register`) or
        ``plugin <distribution> (<module:object>)`` (an entry point)."""
        self.get(name)
        return self._origins[name]

    def names(self) -> tuple[str, ...]:
        self._load_plugins()
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_plugins()
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self.names())
