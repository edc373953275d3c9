"""Registry: registration order, duplicate refusal, unknown names listed, entry-point plugins loaded lazily."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from sak.manifests import registry as registry_mod
from sak.manifests.errors import ConfigError
from sak.manifests.registry import Registry


def test_register_get_and_order() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)
    assert reg.decorator("a")(1) == 1
    assert reg.names() == ("b", "a") and reg.get("a") == 1 and "b" in reg and "c" not in reg and len(reg) == 2
    assert list(reg.items()) == [("b", 2), ("a", 1)]


def test_duplicates_are_refused_unless_replaced() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("a", 2)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3


def test_unknown_name_lists_the_known_ones() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(ConfigError, match=r"unknown widget 'beta'; known widgets: alpha"):
        reg.get("beta")


def test_entry_point_plugins_load_once_and_never_shadow_builtins(monkeypatch) -> None:
    eps = [EntryPoint("json_dumps", "json:dumps", "sak.test"), EntryPoint("alpha", "json:loads", "sak.test"),
           EntryPoint("broken", "no_such_module_xyz:thing", "sak.test")]
    calls = []

    def fake_entry_points(group: str):
        calls.append(group)
        return eps

    monkeypatch.setattr(registry_mod, "entry_points", fake_entry_points)
    reg: Registry[object] = Registry("widget", entry_point_group="sak.test")
    reg.register("alpha", 1)
    import json

    assert reg.get("json_dumps") is json.dumps
    assert reg.get("alpha") == 1  # the built-in wins over the plugin of the same name
    assert reg.names() == ("alpha", "json_dumps")  # the broken plugin is skipped with a warning
    assert calls == ["sak.test"]  # loaded once
