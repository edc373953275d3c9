"""Issue 16 item 6b: a folder that holds NYUD/PASCAL layouts (label folders) is never indexed as plain images.

On main, ``sak-cache index PARENT`` (auto -> folder) indexed every label PNG (segmentation/, edge/,
human_parts/, ...) as an image. Discovery now refuses and names the exact command per layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sak.pipeline.data.datasets import index_dataset
from sak.pipeline.data.demo import make_demo_dataset
from sak.pipeline.data.formats import LayoutsInFolder


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4)).save(path)


def _pascal(root: Path) -> Path:
    _png(root / "JPEGImages" / "2008_000001.jpg")
    _png(root / "human_parts" / "2008_000001.png")
    _png(root / "sal_distill" / "2008_000001.png")
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("2008_000001\n")
    return root


def test_a_parent_of_two_layouts_is_refused_with_one_command_each(tmp_path):
    make_demo_dataset(tmp_path / "data" / "NYUD_MT", n=2, size=(8, 8))
    _pascal(tmp_path / "data" / "PASCAL_MT")
    _png(tmp_path / "data" / "extra" / "photo.jpg")
    with pytest.raises(LayoutsInFolder) as info:
        index_dataset(tmp_path / "data")  # auto: no layout at the top, so folder
    root = tmp_path / "data"
    assert str(info.value) == (
        f"{root} holds dataset layouts; as an image folder their label files would be indexed as images "
        "(NYUD_MT/: edge/, normals/, segmentation/; PASCAL_MT/: human_parts/, sal_distill/). Index each layout on "
        f"its own:\n  sak-cache index {root / 'NYUD_MT'} --format nyud\n"
        f"  sak-cache index {root / 'PASCAL_MT'} --format pascal"
    )
    assert info.value.with_options("--cache /c").commands == [
        f"sak-cache index {root / 'NYUD_MT'} --format nyud --cache /c",
        f"sak-cache index {root / 'PASCAL_MT'} --format pascal --cache /c",
    ]


def test_format_folder_on_a_layout_root_points_at_its_format(tmp_path):
    root = _pascal(tmp_path / "voc")
    with pytest.raises(LayoutsInFolder) as info:
        index_dataset(root, fmt="folder")
    assert info.value.commands == [f"sak-cache index {root} --format pascal"]


def test_two_layouts_of_one_format_get_their_own_names(tmp_path):
    for name in ("nyud_a", "nyud b"):
        make_demo_dataset(tmp_path / "d" / name, n=2, size=(8, 8))
    with pytest.raises(LayoutsInFolder) as info:
        index_dataset(tmp_path / "d", fmt="folder")
    assert info.value.commands == [f"sak-cache index '{tmp_path}/d/nyud b' --format nyud --name nyud-b",
                                   f"sak-cache index {tmp_path / 'd' / 'nyud_a'} --format nyud --name nyud_a"]


def test_label_folders_without_a_split_list_point_at_the_image_folder(tmp_path):
    root = tmp_path / "scans"
    _png(root / "rgb" / "a.png")
    _png(root / "depth" / "a.png")
    with pytest.raises(LayoutsInFolder) as info:
        index_dataset(root)
    assert "(./: depth/)" in str(info.value)
    assert info.value.commands == [f"sak-cache index {root / 'rgb'} --format folder"]


def test_an_image_folder_with_split_folders_still_indexes(tmp_path):
    for rel in ("train/cats/a.png", "val/b.png", "photos_of_depth/c.png"):
        _png(tmp_path / "p" / rel)
    table = index_dataset(tmp_path / "p", workers=1)
    assert sorted(table.column("path").to_pylist()) == ["photos_of_depth/c.png", "train/cats/a.png", "val/b.png"]
