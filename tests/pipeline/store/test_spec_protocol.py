"""FeatureSpec's teacher-input protocol: legacy specs keep their id, new fields hash only when they change."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sak.manifests.config import config_hash
from sak.manifests.errors import ConfigError
from sak.pipeline.extract.job import spec_aug
from sak.pipeline.store.spec import FeatureSpec

LEGACY = Path(__file__).resolve().parents[2] / "data" / "legacy_v1"


def _legacy_spec_json() -> dict:
    [path] = list((LEGACY / "features").glob("*/spec.json"))
    return json.loads(path.read_text())


def test_a_spec_json_without_the_protocol_fields_opens_native_with_its_old_id():
    data = _legacy_spec_json()
    assert "input_protocol" not in data and "img_size" not in data
    spec = FeatureSpec.from_dict(data)
    assert (spec.input_protocol, spec.img_size) == ("native", None)
    assert spec.spec_id == config_hash(data, 12)  # the rule every older sak used: hash of the whole old JSON
    [store] = [p.name for p in (LEGACY / "features").iterdir()]
    assert spec.store_name == store
    assert FeatureSpec.from_json(spec.to_json()) == spec and spec.config_hash() == spec.spec_id


def test_the_student_protocol_is_part_of_the_identity():
    native = FeatureSpec.from_dict(_legacy_spec_json())
    student = replace(native, input_protocol="student", img_size=(64, 80), resolution=(64, 80), grid=(8, 10),
                      resize="none", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ident = student.identity()
    assert (ident["input_protocol"], ident["img_size"]) == ("student", [64, 80])
    assert "input_protocol" not in native.identity() and "img_size" not in native.identity()
    assert student.spec_id != native.spec_id
    assert student.spec_id != replace(student, img_size=(64, 88), resolution=(64, 88), grid=(8, 11)).spec_id
    assert FeatureSpec.from_json(student.to_json()) == student


def test_protocol_fields_are_validated():
    native = FeatureSpec.from_dict(_legacy_spec_json())
    with pytest.raises(ConfigError, match="input_protocol must be one of"):
        replace(native, input_protocol="official")
    with pytest.raises(ConfigError, match="native protocol has no img_size"):
        replace(native, img_size=(64, 80))
    with pytest.raises(ConfigError, match="pass --img-size HxW"):
        replace(native, input_protocol="student", resize="none")
    with pytest.raises(ConfigError, match="resizes by"):
        replace(native, input_protocol="student", img_size=(64, 80))
    student = replace(native, input_protocol="student", img_size=(64, 80), resize="none")
    with pytest.raises(ConfigError, match="aug_crop None must equal img_size"):
        replace(student, aug="sak", views=2)
    assert replace(student, aug="sak", views=2, aug_crop=(64, 80)).aug_crop == (64, 80)


def test_augmented_legacy_specs_mean_the_first_policy_and_never_mix_with_the_official_one():
    data = {**_legacy_spec_json(), "aug": "sak", "views": 2}  # what an augmented store before issue 12 recorded
    old = FeatureSpec.from_dict(data)
    assert old.aug_version == 1 and old.spec_id == config_hash(data, 12)  # same id as before the field existed
    official = replace(old, aug_version=2)
    assert official.spec_id != old.spec_id  # --aug sak never appends official views to an old store
    with pytest.raises(ConfigError, match="aug_version"):
        replace(old, aug="none", views=1, aug_version=2)


@pytest.mark.parametrize("policy, expected", [("none", ("none", 1)), ("sak", ("sak", 2)), ("sak-v1", ("sak", 1))])
def test_extraction_policies_map_to_spec_versions(policy, expected):
    assert spec_aug(policy) == expected
