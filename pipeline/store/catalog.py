"""Finding stores in a cache: every store whose spec opens (:func:`list_stores`), and the ONE name resolver
(:func:`resolve_store`, :func:`resolve_stores`) that every command and the Python API use.

A reference names a store in one of these ways, tried in this order (the first rule that matches
anything decides; later rules are not consulted):

1. a store directory or URL (holding ``spec.json``);
2. the exact store name (``tiny-3fa1c0de9b2e``);
3. a teacher: its full name or model part as recorded in the spec (``test:tiny``, ``tiny``), a
   registry alias (``dinov2``), the student's key for it, or any name the teacher registry resolves
   exactly as ``sak-cache extract -t`` does (``timm:vit_tiny_patch16_224`` finds the store of
   ``timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k``, timm's default tag);
4. a unique prefix of a store name.

``NAME@RES`` (``dinov2@448x576``, ``tiny@64``) keeps the stores of that input size: the student
input (``--img-size``) or the teacher's native square. A reference matching several stores lists
each with the value that picks it; one matching none names the extract command that would create it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence

from ...manifests.errors import SakError, SpecMismatch
from ..data.datasets import list_datasets
from ..storage import as_location
from ..teachers import aliases, teacher_info
from .feature_store import FEATURES_DIR, SPEC_FILE, FeatureStore

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^(\d+)(?:x(\d+))?$")


def list_stores(cache_root: str | os.PathLike[str]) -> list[FeatureStore]:
    """Every store of a cache (``<cache>/features/*/spec.json``) whose spec opens, sorted by name.

    A store whose spec.json is damaged is left out with a warning (it must not hide the others);
    :func:`..cache.scan_stores` reports those, and ``sak-cache ls`` marks them.
    """
    root = as_location(cache_root) / FEATURES_DIR
    stores = []
    for n in root.list_names():
        if (root / n / SPEC_FILE).exists():
            try:
                stores.append(FeatureStore.open(root / n))
            except SakError as exc:
                log.warning("skipping damaged store %s: %s", root / n, exc)
    return stores


def split_ref(ref: str) -> tuple[str, tuple[int, int] | None]:
    """``"dinov2@448x576"`` -> ``("dinov2", (448, 576))``; ``"tiny@64"`` -> ``("tiny", (64, 64))``.

    Only a trailing ``@H`` or ``@HxW`` is a size: ``open_clip:ViT-B-16@openai`` stays one name.
    """
    name, sep, tail = ref.rpartition("@")
    m = _SIZE.match(tail) if sep else None
    if not m or not name:
        return ref, None
    h = int(m.group(1))
    return name, (h, int(m.group(2) or h))


def short_key(teacher: str) -> str:
    """A module-name-safe name for a teacher: its registry alias when it has one (``dinov2``), else its model part."""
    for alias, full in aliases().items():
        if full == teacher:
            return alias
    return re.sub(r"[^A-Za-z0-9_]", "_", teacher.split(":", 1)[-1])


def registry_name(name: str) -> str | None:
    """The full teacher name ``sak-cache extract -t NAME`` records in its spec, or None when NAME is no teacher.

    Alias -> full name; a ``<source>:<model>`` name as its source describes it (timm fills in the
    default pretrained tag). Nothing is downloaded: timm describes a model on the meta device.
    """
    try:
        return teacher_info(name).name
    except SakError:
        return None


def store_size(store: FeatureStore) -> tuple[int, int]:
    """The input size a store's ``@RES`` names: the student input (student protocol), else the native square."""
    spec = store.spec
    size = spec.img_size if spec.input_protocol == "student" and spec.img_size else spec.resolution
    return int(size[0]), int(size[1])


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}" if size[0] == size[1] else f"{size[0]}x{size[1]}"


def describe_store(store: FeatureStore) -> str:
    """One line: the store name, its teacher, input and layers."""
    s = store.spec
    fed = f"student input {size_text(store_size(store))}" if s.input_protocol == "student" else f"native {size_text(store_size(store))}"
    return f"{store.name} (teacher {s.teacher}, {fed}, layers {','.join(map(str, s.layers))}, views {s.views})"


def _teacher_hits(name: str, stores: Sequence[FeatureStore]) -> list[FeatureStore]:
    """Stores of teacher ``name``: as recorded, as aliased, or as the registry resolves it (only when nothing cheaper matched)."""
    full = aliases().get(name, name)
    hits = [s for s in stores if name in (s.spec.teacher, s.spec.short_teacher, short_key(s.spec.teacher))
            or s.spec.teacher == full]
    if hits:
        return hits
    resolved = registry_name(name)
    return [s for s in stores if s.spec.teacher == resolved] if resolved is not None else []


def match_stores(ref: str, stores: Sequence[FeatureStore]) -> tuple[list[FeatureStore], str]:
    """The stores ``ref`` names (before any ``@RES`` filter) and the rule that matched: "store", "teacher", "prefix" or ""."""
    name, _ = split_ref(ref)
    for rule, hits in (("store", lambda: [s for s in stores if s.name == name]),
                       ("teacher", lambda: _teacher_hits(name, stores)),
                       ("prefix", lambda: [s for s in stores if s.name.startswith(name)])):
        found = hits()
        if found:
            return found, rule
    return [], ""


def _picks(name: str, hits: Sequence[FeatureStore], option: str) -> str:
    """Each candidate with the value that picks it: ``NAME@RES`` when that size is unique among them, else the store name."""
    sizes = [store_size(s) for s in hits]
    lines = []
    for store, size in zip(hits, sizes, strict=True):
        value = f"{name}@{size_text(size)}" if sizes.count(size) == 1 else store.name
        lines.append(f"{option}{value}  -> {describe_store(store)}")
    return "; ".join(lines)


def extract_suggestion(name: str, cache_root: str | os.PathLike[str], *, datasets: Sequence[str] = (),
                       img_size: tuple[int, int] | None = None) -> str:
    """The ``sak-cache extract`` command that would create a store for teacher ``name`` (spelled as given)."""
    names = list(datasets) or list_datasets(cache_root)
    if not names:
        return (f"index a dataset first (sak-cache index IMAGES --cache {cache_root} --name NAME), then "
                f"sak-cache extract -t {name} -d NAME --cache {cache_root}")
    opts = [f"-t {name}", *(f"-d {d}" for d in names), f"--cache {cache_root}"]
    if img_size is not None:
        opts.append(f"--img-size {img_size[0]}x{img_size[1]}")
    return "sak-cache extract " + " ".join(opts)


def resolve_store(ref: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None, *,
                  stores: Sequence[FeatureStore] | None = None, option: str = "", datasets: Sequence[str] = (),
                  img_size: tuple[int, int] | None = None) -> FeatureStore:
    """The one store ``ref`` names: a store path/URL, or a name inside ``cache_root`` (rules in the module docstring).

    ``stores``: the cache's stores when already listed. ``option`` prefixes each suggested value in
    errors (``"-t "`` for training's teacher option; empty for a positional STORE). ``datasets`` and
    ``img_size`` complete the suggested extract command when nothing matches.
    """
    path = as_location(ref)
    if (path / SPEC_FILE).exists():
        return FeatureStore.open(path)
    if cache_root is None:
        raise SakError(f"{ref} is not a feature store directory; pass a store path, or --cache with a store name")
    text = os.fspath(ref)
    name, size = split_ref(text)
    stores = list_stores(cache_root) if stores is None else stores
    where = as_location(cache_root) / FEATURES_DIR
    hits, rule = match_stores(text, stores)
    if not hits:
        listed = "; ".join(describe_store(s) for s in stores) or "none"
        if registry_name(name) is None:
            raise SakError(
                f"no feature store {name!r} in {where}: it is no store name, store name prefix or teacher name "
                f"(stores: {listed}). sak-cache ls --cache {cache_root} lists the stores, sak-cache teachers the teacher names"
            )
        raise SakError(
            f"no feature store for teacher {name!r} in {where} (stores: {listed}). Extract it: "
            + extract_suggestion(name, cache_root, datasets=datasets, img_size=size or img_size)
        )
    if size is not None:
        sized = [s for s in hits if size in (store_size(s), tuple(s.spec.resolution), tuple(s.spec.img_size or ()))]
        if not sized:
            raise SpecMismatch(
                f"you asked for {name!r} at resolution {size_text(size)}, but its store(s) were written at: "
                f"{_picks(name, hits, option)}. Pass one of those, or extract that size: "
                + extract_suggestion(name, cache_root, datasets=datasets, img_size=size)
            )
        hits = sized
    if len(hits) > 1:
        raise SakError(f"{text!r} matches several stores (by {rule} name) in {where}; pick one: {_picks(name, hits, option)}")
    return hits[0]


def resolve_stores(refs: Iterable[str], cache_root: str | os.PathLike[str], *,
                   stores: Sequence[FeatureStore] | None = None, option: str = "-t ", datasets: Sequence[str] = (),
                   img_size: tuple[int, int] | None = None) -> list[FeatureStore]:
    """The stores ``refs`` name, in order, each once (see :func:`resolve_store`)."""
    stores = list_stores(cache_root) if stores is None else stores
    chosen: list[FeatureStore] = []
    for ref in refs:
        store = resolve_store(ref, cache_root, stores=stores, option=option, datasets=datasets, img_size=img_size)
        if all(store.path != s.path for s in chosen):
            chosen.append(store)
    return chosen
