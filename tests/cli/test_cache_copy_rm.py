"""`sak-cache copy` carries the dataset index so the copy trains; `sak-cache rm` asks, refuses a store being
written, and says what it freed; the old option names still work, with a warning naming the new one."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from sak.cli import common
from sak.cli.cache import app as cache_app
from sak.cli.train import app as train_app
from sak.pipeline.data.datasets import open_dataset
from sak.pipeline.storage.local import LocalLocation
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.claims import BlockClaims

EXTRACT = ["extract", "-t", "test:tiny", "--random-init", "--device", "cpu", "--threads", "1"]


def _run(app, *args, **kw):
    common.out.width = common.console.width = 200
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def _ok(res) -> str:
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_a_copied_store_trains_with_fit_cache_copy(demo_cache, tmp_path) -> None:
    cache, root = demo_cache
    _ok(_run(cache_app, *EXTRACT, "--cache", cache))
    (store,) = list_stores(cache)
    ids = store.commits().column("sample_id").to_pylist()
    subset = tmp_path / "ids.txt"
    subset.write_text("\n".join(ids[:5]) + "\n")
    part = tmp_path / "part"
    text = _ok(_run(cache_app, "copy", store.name, "--cache", cache, "--to", part, "--samples", subset))
    assert "dataset index nyud: 5 image(s)" in text
    assert sorted(open_dataset(part, "nyud").table.column("sample_id").to_pylist()) == sorted(ids[:5])  # only those samples

    full = tmp_path / "copy"
    text = _ok(_run(cache_app, "copy", store.name, "--cache", cache, "--to", full))
    assert f"next: sak-train fit --cache {full} -d nyud -t test:tiny" in text
    copied = open_dataset(full, "nyud")
    original = open_dataset(cache, "nyud")
    assert copied.root == original.root == root.resolve() and copied.format == original.format == "nyud"
    assert copied.table.equals(original.table.select(copied.table.column_names))
    assert pq.read_metadata(full / "datasets" / "nyud.parquet").metadata[b"sak.root"] == str(root.resolve()).encode()

    run = tmp_path / "run"
    out = _ok(_run(train_app, "fit", "--cache", full, "-d", "nyud", "-t", "test:tiny", "--backbone", "test_vit", "--iters", 2,
                   "--batch-size", 4, "--workers", 0, "--device", "cpu", "--out", run, "--eval-every", 0))
    assert "covered 9/9 samples of nyud/train" in out and (run / "ckpt" / "last.safetensors").exists()


def test_rm_asks_refuses_a_store_being_written_and_says_what_it_freed(demo_cache) -> None:
    cache, _ = demo_cache
    _ok(_run(cache_app, *EXTRACT, "--cache", cache, "--limit", 4))
    (store,) = list_stores(cache)
    size = store.size_bytes()
    n_files = sum(f.is_file() for f in Path(str(store.path)).rglob("*"))
    claims = BlockClaims(LocalLocation(str(store.path)), run="a-running-extraction")  # as a writer claims a block
    held = claims.claim("b-000001").record  # this process: alive, lease not expired
    busy = _run(cache_app, "rm", "tiny", "--cache", cache, "--yes")
    assert busy.exit_code == 2 and store.path.exists()
    text = " ".join(busy.output.split())
    assert "is being written: 1 block(s) claimed by a running extraction" in text
    assert f"then run sak-cache rm {store.name} --cache {cache} again" in text
    claims.release(held)

    no = _run(cache_app, "rm", "tiny", "--cache", cache, input="n\n")
    assert no.exit_code == 1 and f"delete store {store.name} (test:tiny, 4 rows" in no.output and store.path.exists()
    yes = _ok(_run(cache_app, "rm", "tiny", "--cache", cache, input="y\n"))
    assert f"removed {store.path}: {n_files} file(s), {size / 1e6:,.1f} MB freed" in yes
    assert not store.path.exists() and list_stores(cache) == []


def test_rm_removes_a_damaged_store_by_its_folder_name(demo_cache) -> None:
    cache, _ = demo_cache
    _ok(_run(cache_app, *EXTRACT, "--cache", cache, "--limit", 2))
    (store,) = list_stores(cache)
    (Path(str(store.path)) / "spec.json").write_text("{oops")
    assert _run(cache_app, "ls", "--cache", cache).exit_code == 1  # listed as damaged
    _ok(_run(cache_app, "rm", store.name, "--cache", cache, "--yes"))
    assert not store.path.exists()


def test_old_option_names_still_work_and_warn(demo_cache) -> None:
    cache, _ = demo_cache
    res = _run(cache_app, "extract", "-t", "test:tiny", "--random-init", "--device", "cpu", "--cache", cache, "--limit", 2,
               "--io-threads", 1, "--input-protocol", "native", "--resolution", 32)
    text = " ".join(_ok(res).split())
    assert "--io-threads is deprecated and will be removed: use --threads" in text
    assert "--resolution is deprecated and will be removed: use --native-size" in text
    (store,) = list_stores(cache)
    assert store.spec.resolution == (32, 32) and store.commits().num_rows == 2
    helptext = _run(cache_app, "extract", "--help").output
    assert "--native-size" in helptext and "--threads" in helptext and "--io-threads" not in helptext and "--resolution" not in helptext
    assert "export" not in [c.name for c in cache_app.registered_commands if not c.hidden]
