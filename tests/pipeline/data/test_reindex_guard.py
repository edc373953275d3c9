"""Issue 16 item 6a: re-indexing under an existing name never silently changes what training by that name means.

Issue 14 refused another root and removed or changed images; these are the changes that still went through
silently on the same root: a sample moved to another split (the val set changes), a label file gone, and another
``--format`` (other label conventions, other sample ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sak.manifests.errors import DatasetError
from sak.pipeline.data.datasets import index_dataset, open_dataset, write_dataset_index


def _nyud(root: Path) -> Path:
    for i, sid in enumerate(("a", "b", "c")):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), (i, 0, 0)).save(root / "images" / f"{sid}.png")
        for sub in ("segmentation", "edge"):
            (root / sub).mkdir(exist_ok=True)
            Image.fromarray(np.full((4, 6), i + 1, np.uint8)).save(root / sub / f"{sid}.png")
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("a\nb\n")
    (root / "gt_sets" / "val.txt").write_text("c\n")
    return root


def test_a_sample_moved_to_another_split_is_refused_unless_replace(tmp_path):
    cache, root = tmp_path / "cache", _nyud(tmp_path / "NYUD")
    write_dataset_index(cache, "nyud", index_dataset(root), root)
    (root / "gt_sets" / "train.txt").write_text("a\n")
    (root / "gt_sets" / "val.txt").write_text("b\nc\n")
    with pytest.raises(DatasetError) as info:
        write_dataset_index(cache, "nyud", index_dataset(root), root)
    msg = str(info.value)
    assert "(>1 moved to another split (b: train -> val))" in msg and "Pass --replace" in msg
    assert open_dataset(cache, "nyud").splits() == {"train": 2, "val": 1}  # untouched
    write_dataset_index(cache, "nyud", index_dataset(root), root, replace=True)
    assert open_dataset(cache, "nyud").splits() == {"train": 1, "val": 2}


def test_a_lost_label_is_refused_and_a_new_label_is_fine(tmp_path):
    cache, root = tmp_path / "cache", _nyud(tmp_path / "NYUD")
    (root / "edge" / "c.png").unlink()
    write_dataset_index(cache, "nyud", index_dataset(root), root)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(root / "edge" / "c.png")
    write_dataset_index(cache, "nyud", index_dataset(root), root)  # a label added: allowed
    assert open_dataset(cache, "nyud").row("c")["label_edge"] == "edge/c.png"
    (root / "edge" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"\(!1 lost labels \(a: edge\)\).*Pass --replace"):
        write_dataset_index(cache, "nyud", index_dataset(root), root)
    assert open_dataset(cache, "nyud").row("a")["label_edge"] == "edge/a.png"


def test_another_format_on_the_same_root_is_refused_naming_both(tmp_path):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(root / "JPEGImages" / "x.jpg")
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("x\n")
    cache = tmp_path / "cache"
    write_dataset_index(cache, "voc", index_dataset(root, name="voc"), root)
    with pytest.raises(DatasetError) as info:
        write_dataset_index(cache, "voc", index_dataset(root, name="voc", fmt="folder"), root)
    msg = str(info.value)
    assert f"dataset 'voc' ({cache / 'datasets' / 'voc.parquet'}) was indexed with --format pascal; " in msg
    assert "this index is --format folder" in msg
    assert f"sak-cache index {root.resolve()} --format pascal" in msg and "--replace" in msg
    assert open_dataset(cache, "voc").format == "pascal"
    write_dataset_index(cache, "voc", index_dataset(root, name="voc", fmt="folder"), root, replace=True)
    assert open_dataset(cache, "voc").format == "folder"
