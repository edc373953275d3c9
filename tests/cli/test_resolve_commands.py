"""Every command and the API resolve a store name identically (issue 16 item 2), on stores extracted through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sak.cli.cache import app as cache_app
from sak.cli.train import app as train_app
from sak.manifests.errors import SakError
from sak.pipeline import open_cache
from sak.pipeline.data.datasets import open_dataset
from sak.student.data.stores import select_stores

runner = CliRunner()
REFS = ["tiny", "tiny2", "test:tiny", "timm:vit_tiny_patch16_224", "vit_tiny", "tin", "nonsense", "sam"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, demo_nyud: Path) -> Path:
    from sak.pipeline.data.datasets import index_dataset, write_dataset_index

    root = tmp_path_factory.mktemp("resolve") / "cache"
    write_dataset_index(root, "nyud", index_dataset(demo_nyud, name="nyud", fmt="nyud", workers=1), demo_nyud)
    res = runner.invoke(cache_app, ["extract", "-t", "test:tiny", "-t", "test:tiny2", "-t", "timm:vit_tiny_patch16_224",
                                    "--random-init", "--cache", str(root), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return root


def _api(cache: Path, ref: str) -> str:
    try:
        return open_cache(cache).store(ref).name
    except SakError as exc:
        return f"error: {exc}"


def _fit_path(cache: Path, ref: str) -> str:  # what fit/eval -t use
    try:
        return select_stores(str(cache), open_dataset(cache, "nyud"), [ref])[0].name
    except SakError as exc:
        return f"error: {exc}"


def _cli(command: str):
    def run(cache: Path, ref: str) -> str:
        res = runner.invoke(cache_app, [command, ref, "--cache", str(cache)], terminal_width=1000)
        text = " ".join(res.output.split())
        if res.exit_code == 2:
            return text[text.index("error:"):]
        assert res.exit_code == 0, text
        flat = "".join(res.output.split())  # a table title may fold a long path
        names = {s.name for s in open_cache(cache).stores() if s.name in flat}
        assert len(names) == 1, text
        return names.pop()
    return run


RESOLVERS = {"api": _api, "fit -t": _fit_path, "info": _cli("info"), "verify": _cli("verify"), "compact": _cli("compact")}


@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("how", list(RESOLVERS))
def test_every_command_resolves_a_name_like_the_api(cache: Path, how: str, ref: str) -> None:
    want = _api(cache, ref)
    got = RESOLVERS[how](cache, ref)
    if want.startswith("error: "):  # the same refusal (the fit path prefixes its picks with -t)
        assert got.startswith("error: ") and got[:40] == " ".join(want.split())[:40]
    else:
        assert got == want


def test_the_names_resolve_to_the_expected_stores(cache: Path) -> None:
    got = {ref: _api(cache, ref) for ref in REFS}
    assert re.fullmatch(r"tiny-[0-9a-f]{12}", got["tiny"]) and got["test:tiny"] == got["tiny"]
    assert re.fullmatch(r"tiny2-[0-9a-f]{12}", got["tiny2"])
    assert re.fullmatch(r"vit_tiny_patch16_224\.augreg_in21k_ft_in1k-[0-9a-f]{12}", got["timm:vit_tiny_patch16_224"])
    assert got["vit_tiny"] == got["timm:vit_tiny_patch16_224"]  # unique prefix
    assert got["tin"].startswith("error: 'tin' matches several stores (by prefix name)")
    assert got["nonsense"].startswith("error: no feature store 'nonsense'")
    assert got["sam"].startswith("error: no feature store for teacher 'sam'")
    assert got["sam"].endswith(f"Extract it: sak-cache extract -t sam -d nyud --cache {cache}")


def test_fit_finds_the_store_of_the_name_extract_took(cache: Path, tmp_path: Path) -> None:
    # issue: `fit --teachers timm:vit_tiny_patch16_224` failed after `extract -t timm:vit_tiny_patch16_224` succeeded
    run = tmp_path / "run"
    res = runner.invoke(train_app, ["fit", "--cache", str(cache), "-t", "timm:vit_tiny_patch16_224", "--backbone", "test_vit",
                                    "--iters", "1", "--batch-size", "4", "--ckpt-every", "0", "--threads", "0",
                                    "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0, res.output
    record = json.loads((run / "config.json").read_text())
    assert [s["name"] for s in record["stores"]] == [_api(cache, "timm:vit_tiny_patch16_224")]
