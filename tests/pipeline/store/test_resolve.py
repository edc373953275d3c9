"""The one store-name resolver (issue 16 item 2): exact store name > teacher name/alias (as extract resolves it) > unique prefix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sak.manifests.errors import SakError, SpecMismatch
from sak.pipeline.store.catalog import registry_name, resolve_store, resolve_stores, split_ref
from sak.pipeline.store.feature_store import FeatureStore

DINOV2 = "timm:vit_base_patch14_dinov2.lvd142m"
VIT_TINY = "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # what extract -t timm:vit_tiny_patch16_224 records


@pytest.fixture()
def cache(st, tmp_path: Path) -> tuple[Path, dict[str, FeatureStore]]:
    """Stores of test:tiny, test:tiny2, dinov2 and timm's vit_tiny; one dataset "nyud" indexed (name only)."""
    root = tmp_path / "cache"
    stores = {
        "tiny": FeatureStore.create(root, st.make_spec()),
        "tiny2": FeatureStore.create(root, st.make_spec(teacher="test:tiny2", width=48)),
        "dinov2": FeatureStore.create(root, st.make_spec(teacher=DINOV2, width=768, patch_size=14)),
        "vit_tiny": FeatureStore.create(root, st.make_spec(teacher=VIT_TINY, width=192, patch_size=16)),
    }
    (root / "datasets").mkdir()
    (root / "datasets" / "nyud.parquet").touch()
    return root, stores


def test_split_ref_only_takes_a_trailing_size() -> None:
    assert split_ref("dinov2@448x576") == ("dinov2", (448, 576))
    assert split_ref("tiny@64") == ("tiny", (64, 64))
    assert split_ref("open_clip:ViT-B-16@openai") == ("open_clip:ViT-B-16@openai", None)
    assert split_ref("@64") == ("@64", None)


def test_registry_name_is_what_extract_records() -> None:
    assert registry_name("dinov2") == DINOV2
    assert registry_name("timm:vit_tiny_patch16_224") == VIT_TINY
    assert registry_name("test:tiny") == "test:tiny"
    assert registry_name("tiny") is None and registry_name("timm:no_such_model_xyz") is None


def test_an_alias_finds_its_store(cache) -> None:
    # issue: `extract -t dinov2` works but `info dinov2` said "no store"
    root, stores = cache
    assert resolve_store("dinov2", root).path == stores["dinov2"].path


def test_a_bare_timm_name_finds_the_store_of_its_default_tag(cache) -> None:
    # issue: the store of `-t timm:vit_tiny_patch16_224` is ...augreg_in21k_ft_in1k and was not found
    root, stores = cache
    assert resolve_store("timm:vit_tiny_patch16_224", root).path == stores["vit_tiny"].path
    assert resolve_store(VIT_TINY, root).path == stores["vit_tiny"].path


def test_a_full_teacher_name_beats_a_prefix(cache) -> None:
    # issue: `verify tiny` was ambiguous with tiny2 although tiny is a full (model) name
    root, stores = cache
    assert resolve_store("tiny", root).path == stores["tiny"].path
    assert resolve_store("test:tiny", root).path == stores["tiny"].path
    assert resolve_store("tiny2", root).path == stores["tiny2"].path


def test_exact_store_name_then_unique_prefix(cache) -> None:
    root, stores = cache
    for store in stores.values():
        assert resolve_store(store.name, root).path == store.path
        assert resolve_store(str(store.path)).path == store.path  # a path needs no cache
    assert resolve_store(stores["tiny2"].name[:8], root).path == stores["tiny2"].path
    assert resolve_store("vit_base", root).path == stores["dinov2"].path
    with pytest.raises(SakError, match="matches several stores") as err:
        resolve_store("tin", root)
    assert stores["tiny"].name in str(err.value) and stores["tiny2"].name in str(err.value)


def test_no_store_names_the_extract_command_that_would_create_it(cache) -> None:
    root, _ = cache
    with pytest.raises(SakError) as err:
        resolve_store("dinov2-l", root)
    assert str(err.value).startswith(f"no feature store for teacher 'dinov2-l' in {root / 'features'}")
    assert str(err.value).endswith(f"Extract it: sak-cache extract -t dinov2-l -d nyud --cache {root}")
    with pytest.raises(SakError) as err:
        resolve_stores(["sam@448x576"], root, img_size=(64, 80))  # the asked size wins over the run's
    assert str(err.value).endswith(f"sak-cache extract -t sam -d nyud --cache {root} --img-size 448x576")
    with pytest.raises(SakError, match=r"no feature store 'nonsense' in .*: it is no store name, store name prefix or "
                                       r"teacher name .* sak-cache ls --cache .* sak-cache teachers"):
        resolve_store("nonsense", root)


def test_resolution_picks_among_the_stores_of_a_teacher(st, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    a = FeatureStore.create(root, st.make_spec())
    b = FeatureStore.create(root, st.make_spec(resolution=(32, 32), grid=(4, 4)))
    with pytest.raises(SakError) as err:
        resolve_stores(["tiny"], root)
    text = str(err.value)
    assert "'tiny' matches several stores (by teacher name)" in text
    assert re.search(rf"-t tiny@64 +-> {a.name} \(teacher test:tiny, native 64", text)
    assert re.search(rf"-t tiny@32 +-> {b.name} \(teacher test:tiny, native 32", text)
    assert resolve_store("tiny@32", root).path == b.path
    assert resolve_store("test:tiny@64", root).path == a.path
    assert [s.path for s in resolve_stores(["tiny@64", a.name, "tiny@32"], root)] == [a.path, b.path]  # each once, in order
    with pytest.raises(SpecMismatch, match=r"you asked for 'tiny' at resolution 48, but its store\(s\) were written at: "
                                           r"tiny@64 .*tiny@32 .*sak-cache extract -t tiny "):
        resolve_store("tiny@48", root)
