"""Inputs that used to hang or poison: a FIFO named like an image (listed, or swapped in after listing).

Every case runs in a subprocess under a timeout: a regression hangs there, not the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.reliability, pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")]

TIMEOUT = 120  # seconds; each case takes a few
FIFO = "is a FIFO (named pipe), not a regular file"


def _images(root: Path, n: int = 3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(root / f"im{i}.png")


def _cli(*args: object) -> subprocess.CompletedProcess:
    code = "import sys; from sak.cli.cache import main; sys.argv[0] = 'sak-cache'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "COLUMNS": "400"})


def _python(script: str, *args: object) -> dict:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rows(cache: Path, name: str) -> dict[str, dict]:
    from sak.pipeline.data.datasets import open_dataset

    return {r["sample_id"]: r for r in open_dataset(cache, name).table.to_pylist()}


def test_index_with_a_fifo_named_jpg_finishes_and_records_it(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    _images(root)
    os.mkfifo(root / "x.jpg")
    res = _cli("index", root, "--cache", cache, "--threads", 2)
    assert res.returncode == 1, res.stdout + res.stderr  # 1: some items failed
    rows = _rows(cache, "photos")
    assert [rows[f"im{i}"]["status"] for i in range(3)] == ["ok"] * 3
    assert rows["x"]["status"] == "failed" and rows["x"]["error"] == (
        f"{root / 'x.jpg'} {FIFO}; only regular files are indexed: replace it with the image or remove it")


def test_extract_data_with_a_fifo_named_jpg_finishes(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    _images(root)
    os.mkfifo(root / "x.jpg")
    res = _cli("extract", "-t", "test:tiny", "--random-init", "--data", root, "--cache", cache, "--device", "cpu",
               "--img-size", "32x32")
    assert res.returncode == 1, res.stdout + res.stderr
    from sak.pipeline.store.feature_store import FeatureStore

    [store_dir] = list((cache / "features").iterdir())
    store = FeatureStore.open(store_dir)
    assert store.commits("ok").num_rows == 3
    [failed] = store.commits("failed").to_pylist()
    assert failed["sample_id"] == "x" and FIFO in failed["error"]


def test_a_file_swapped_for_a_fifo_after_listing_fails_its_row_fast(tmp_path):
    """Discovery saw a regular file; by the time it is hashed it is a FIFO: O_NONBLOCK + fstat refuse it."""
    root = tmp_path / "photos"
    _images(root)
    out = _python("""
        import json, os, sys
        from pathlib import Path
        from sak.pipeline.data import datasets
        root = Path(sys.argv[1])
        listed = datasets.discover(root, "folder")
        os.unlink(root / "im1.png")
        os.mkfifo(root / "im1.png")
        datasets.discover = lambda r, f: listed
        table = datasets.index_dataset(root, workers=2)
        print(json.dumps({r["sample_id"]: [r["status"], r["error"]] for r in table.to_pylist()}))
    """, root)
    assert out["im0"] == ["ok", None] and out["im2"] == ["ok", None]
    assert out["im1"] == ["failed", f"{root / 'im1.png'} {FIFO}; only regular files are read: replace it with the file "
                                    "itself or remove it"]


def test_an_image_swapped_for_a_fifo_after_indexing_fails_its_extraction_row(tmp_path):
    root, cache = tmp_path / "photos", tmp_path / "cache"
    _images(root)
    assert _cli("index", root, "--cache", cache).returncode == 0
    os.unlink(root / "im2.png")
    os.mkfifo(root / "im2.png")
    res = _cli("extract", "-t", "test:tiny", "--random-init", "--dataset", "photos", "--cache", cache, "--device", "cpu",
               "--img-size", "32x32")
    assert res.returncode == 1, res.stdout + res.stderr
    out = _python("""
        import json, sys
        from pathlib import Path
        from sak.pipeline.store.feature_store import FeatureStore
        [d] = list((Path(sys.argv[1]) / "features").iterdir())
        print(json.dumps([[r["sample_id"], r["error"]] for r in FeatureStore.open(d).commits("failed").to_pylist()]))
    """, cache)
    assert out == [["im2", f"{root / 'im2.png'} {FIFO}; only regular files are read: replace it with the file itself or "
                           "remove it"]]


def test_readers_of_file_bytes_refuse_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    out = _python("""
        import json, sys
        from sak.manifests.errors import SakError
        from sak.manifests.hashing import sha256_file
        from sak.pipeline.data.images import decode_rgb, open_image_size
        got = {}
        for fn in (sha256_file, decode_rgb, open_image_size):
            try:
                fn(sys.argv[1])
                got[fn.__name__] = "no error"
            except SakError as exc:
                got[fn.__name__] = str(exc)
        print(json.dumps(got))
    """, tmp_path / "x.png")
    want = f"{tmp_path / 'x.png'} {FIFO}; only regular files are read: replace it with the file itself or remove it"
    assert out == {"sha256_file": want, "decode_rgb": want, "open_image_size": want}
