"""Teacher registry: name resolution, refusals with advice, plugins, and an import graph without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import sak.manifests.registry as registry_mod
from sak.manifests.errors import ConfigError, TeacherUnavailable
from sak.pipeline.teachers import (
    TEACHERS,
    aliases,
    create_teacher,
    list_sources,
    list_teachers,
    register_teacher,
    resolve_name,
    teacher_info,
)
from sak.pipeline.teachers.test_teacher import TINY2

TEACHERS_DIR = Path(__file__).resolve().parents[3] / "pipeline" / "teachers"


def test_aliases_resolve_to_timm_pretrained_tags():
    import timm
    from timm.models import get_pretrained_cfg

    assert resolve_name("dinov2") == "timm:vit_base_patch14_dinov2.lvd142m"
    assert resolve_name("sam") == "timm:samvit_base_patch16.sa1b"
    # official SAK: timmclip_base/large = these timm archs with timm's default tag (models/backbones/model_set.py:17-18)
    assert resolve_name("clip") == "timm:vit_base_patch16_clip_384.laion2b_ft_in12k_in1k"
    assert resolve_name("clip-l") == "timm:vit_large_patch14_clip_336.laion2b_ft_in12k_in1k"
    assert resolve_name("test:tiny") == "test:tiny"
    assert list(aliases()) == ["dinov2", "dinov2-l", "sam", "sam-l", "clip", "clip-l"]
    for alias, full in aliases().items():
        source, model = full.split(":", 1)
        assert source == "timm", alias
        assert timm.list_pretrained(model) == [model], f"{alias} -> {model} is not a timm pretrained tag"
        arch, tag = model.split(".", 1)
        assert get_pretrained_cfg(arch).tag == tag, f"{alias}: {tag} is not timm's default tag of {arch}"


def test_listing_names_every_registered_teacher_and_source():
    names = list_teachers()
    assert set(aliases()) | set(aliases().values()) | {"test:tiny", "test:tiny2"} == set(names)
    assert all(info.role for key, info in names.items() if key in aliases())
    assert not any(info.role for key, info in names.items() if key not in aliases())
    assert list_sources() == ("timm", "open_clip", "test")


@pytest.mark.parametrize("lookup", [lambda n: create_teacher(n, random_init=True), teacher_info], ids=["create", "info"])
@pytest.mark.parametrize(
    "name, fragment",
    [
        ("dinov3", "Use an alias"),
        ("nosuch:model", "unknown teacher source"),
        ("test:huge", "known: test:tiny, test:tiny2"),
        ("timm:vit_nosuch_patch16", "timm has no architecture"),
        ("timm:vit_small_patch16_224.nosuchtag", "Known tags for vit_small_patch16_224"),
        ("open_clip:ViT-Q-99", "open_clip has no model config"),
        ("open_clip:ViT-B-16@nosuchtag", "known: ["),
    ],
)
def test_unknown_names_are_refused_with_advice(lookup, name, fragment):
    with pytest.raises(TeacherUnavailable) as info:
        lookup(name)
    assert fragment in str(info.value)


def test_weights_and_random_init_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        create_teacher("test:tiny", weights=str(tmp_path / "w.safetensors"), random_init=True)


def test_alias_names_are_plain_words():
    with pytest.raises(ConfigError, match="must not contain ':'"):
        register_teacher(TINY2, aliases={"test:other": "nothing"})


@pytest.fixture()
def fresh_plugins(monkeypatch):
    """The teacher registry as if no plugin had been looked up yet, restored afterwards."""
    monkeypatch.setattr(TEACHERS, "_entries", dict(TEACHERS._entries))
    monkeypatch.setattr(TEACHERS, "_plugins_loaded", False)

    def install(*eps: EntryPoint) -> list[str]:
        groups: list[str] = []

        def fake(group: str):
            groups.append(group)
            return list(eps)

        monkeypatch.setattr(registry_mod, "entry_points", fake)
        return groups

    return install


def test_plugin_entry_point_adds_an_alias(fresh_plugins):
    groups = fresh_plugins(EntryPoint("tiny-plugin", "sak.pipeline.teachers.test_teacher:TINY2", "sak.teachers"))
    assert resolve_name("tiny-plugin") == "test:tiny2"
    assert groups == ["sak.teachers"]
    assert aliases()["tiny-plugin"] == "test:tiny2"
    assert teacher_info("tiny-plugin") == TINY2
    t = create_teacher("tiny-plugin")
    assert (t.name, t.width) == ("test:tiny2", 48)


def test_plugin_that_is_not_teacher_info_is_refused(fresh_plugins):
    fresh_plugins(EntryPoint("odd", "json:dumps", "sak.teachers"))
    with pytest.raises(ConfigError, match="not a TeacherInfo"):
        teacher_info("odd")


# ---------------------------------------------------------------- import graph


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(relative modules imported at module level, relative imports found inside functions)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    nested: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            top.add(node.module or "")
            top.update(f"{node.module}.{a.name}" if node.module else a.name for a in node.names)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested += [f"{fn.name}: .{n.module}" for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and n.level]
    return top, nested


def test_teacher_modules_have_no_cycle_and_no_in_function_project_imports():
    adapters = {"timm_teacher", "open_clip_teacher", "test_teacher"}
    graph = {}
    for path in sorted(TEACHERS_DIR.glob("*.py")):
        top, nested = _imports(path)
        assert nested == [], f"{path.name} imports project modules inside functions: {nested}"
        graph[path.stem] = {m.split(".")[0] for m in top if m.split(".")[0] in {p.stem for p in TEACHERS_DIR.glob("*.py")}}
    assert not (graph["registry"] & (adapters | {"builtin"})), graph["registry"]
    for name in adapters:
        assert "registry" not in graph[name] and "builtin" not in graph[name], (name, graph[name])

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    cycles = [m for m in graph if m != "__init__" and reaches(m, m)]
    assert cycles == []


@pytest.mark.parametrize("module", ["registry", "timm_teacher", "test_teacher"])
def test_any_teacher_module_imports_first_in_a_fresh_interpreter(module):
    code = (
        f"import sak.pipeline.teachers.{module}, sys\n"
        "from sak.pipeline.teachers import teacher_info\n"
        "assert teacher_info('dinov2').width == 768\n"
        "assert 'open_clip' not in sys.modules, 'open_clip must stay a deferred import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
