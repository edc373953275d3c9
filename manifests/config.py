"""Frozen dataclass configs with canonical JSON and stable short hashes.

A config is the experiment record: it is what gets hashed, logged and saved.
``canonical_json`` is byte-for-byte stable across runs, machines and Python
versions (sorted keys, no whitespace, tuples as lists, floats via ``repr``),
so ``config_hash`` can name a store on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound="Config")


def _plain(value: Any) -> Any:
    """Turn a config value into JSON-able builtins (tuples -> lists, nested configs -> dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config value {value!r} is not finite; JSON cannot store it")
    return value


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, compact separators, ASCII only."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any, length: int = 12) -> str:
    """Short sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()[:length]


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Rebuild a field value from JSON builtins, guided by its annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(non_none[0], value, where)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return tp.from_dict(value) if issubclass(tp, Config) else tp(**value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin in (dict, Mapping) or tp is dict:
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class Config:
    """Mixin for ``@dataclass(frozen=True, kw_only=True)`` configs.

    Subclasses validate in ``__post_init__`` and raise :class:`ConfigError` with
    the fix. ``from_dict(cfg.to_dict()) == cfg`` holds for every valid config.
    """

    # set by @dataclass on every subclass; declared so a type checker sees configs as dataclasses
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(names)}. "
                "The file was probably written by a newer version of sak: upgrade sak."
            )
        kwargs = {k: _coerce(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return canonical_json(self)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def config_hash(self, length: int = 12) -> str:
        return config_hash(self, length)
