"""Config hashing: canonical JSON round trips, key-order independence, and a golden hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sak.manifests.config import Config, canonical_json, config_hash
from sak.manifests.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Inner(Config):
    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)


@dataclass(frozen=True, kw_only=True)
class Sample(Config):
    name: str
    layers: tuple[int, ...] = (2, 5, 8, 11)
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)
    note: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
inners = st.builds(Inner, size=st.tuples(st.integers(1, 4096), st.integers(1, 4096)),
                   mean=st.lists(finite, max_size=4).map(tuple))
samples = st.builds(
    Sample,
    name=st.text(max_size=20),
    layers=st.lists(st.integers(-5, 100), max_size=6).map(tuple),
    scale=finite,
    inner=inners,
    note=st.none() | st.text(max_size=10),
    counts=st.dictionaries(st.text(max_size=5), st.integers(-10**9, 10**9), max_size=4),
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_dict_and_json_round_trip(cfg):
    assert Sample.from_dict(cfg.to_dict()) == cfg
    assert Sample.from_json(cfg.to_json()) == cfg
    assert Sample.from_json(cfg.to_json()).config_hash() == cfg.config_hash()
    assert isinstance(Sample.from_dict(cfg.to_dict()).layers, tuple)
    assert isinstance(Sample.from_dict(cfg.to_dict()).inner.size, tuple)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.integers() | finite | st.text(max_size=5), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_hash_ignores_key_order(data, rnd):
    items = list(data.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(data)
    assert config_hash(dict(items)) == config_hash(data)


@settings(max_examples=40, deadline=None)
@given(samples)
def test_config_hash_equals_hash_of_reordered_dict(cfg):
    reordered = dict(reversed(list(cfg.to_dict().items())))
    assert config_hash(reordered) == cfg.config_hash()


def test_canonical_json_form():
    cfg = Sample(name="x", scale=0.1, counts={"b": 1, "a": 2})
    text = canonical_json(cfg)
    assert " " not in text and text.startswith('{"counts":{"a":2,"b":1},"inner":')
    assert json.loads(text)["layers"] == [2, 5, 8, 11]
    assert '"scale":0.1' in text


def test_golden_hash():
    """Changing canonical JSON or hashing renames every store on disk: this must fail loudly."""
    cfg = Sample(name="dinov2", layers=(2, 5, 8, 11), scale=0.5, inner=Inner(size=(518, 518)), counts={"z": 1, "a": 0})
    assert canonical_json(cfg) == (
        '{"counts":{"a":0,"z":1},"inner":{"mean":[0.485,0.456,0.406],"size":[518,518]},'
        '"layers":[2,5,8,11],"name":"dinov2","note":null,"scale":0.5}'
    )
    assert cfg.config_hash() == "5b7c199dd3b4"
    assert len(cfg.config_hash(8)) == 8 and cfg.config_hash().startswith(cfg.config_hash(8))


def test_small_changes_change_the_hash():
    base = Sample(name="a")
    assert base.config_hash() != Sample(name="a", layers=(2, 5, 8)).config_hash()
    assert base.config_hash() != Sample(name="a", inner=Inner(size=(224, 225))).config_hash()
    assert base.config_hash() != Sample(name="a", scale=1.0000001).config_hash()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(bad):
    with pytest.raises(ConfigError, match="not finite"):
        canonical_json(Sample(name="a", scale=bad))


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match=r"no field\(s\) \['colour'\]"):
        Sample.from_dict({"name": "a", "colour": "red"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        Sample.from_json("{nope")
