"""Content hashing matches hashlib; manifest paths can never leave their dataset root."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sak.manifests.errors import PathEscape
from sak.manifests.hashing import sha256_bytes, sha256_file
from sak.manifests.paths import relative_path, resolve_inside


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 4096))
def test_sha256_file_matches_hashlib(tmp_path, data, chunk):
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_bytes=chunk) == expected
    assert sha256_file(path) == expected
    assert sha256_bytes(data) == expected


def test_sha256_known_value(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_resolve_inside_accepts_plain_relative_paths(tmp_path):
    assert resolve_inside(tmp_path, "images/a.png") == tmp_path / "images" / "a.png"
    assert resolve_inside(tmp_path, "./a.png") == tmp_path / "a.png"


@pytest.mark.parametrize("rel", ["../x.png", "images/../../x.png", "a/../b.png"])
def test_resolve_inside_refuses_dotdot(tmp_path, rel):
    with pytest.raises(PathEscape, match="contains '..'"):
        resolve_inside(tmp_path, rel)


def test_resolve_inside_refuses_absolute(tmp_path):
    with pytest.raises(PathEscape, match="is absolute"):
        resolve_inside(tmp_path, "/etc/passwd")


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_resolve_inside_refuses_symlink_out(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "images" / "a.png").symlink_to(tmp_path / "secret.png")
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PathEscape, match="outside the dataset root"):
        resolve_inside(root, "images/a.png")
    with pytest.raises(PathEscape, match="outside the dataset root"):
        resolve_inside(root, "linkdir/secret.png")
    (root / "images" / "b.png").write_bytes(b"y")
    (root / "images" / "c.png").symlink_to(root / "images" / "b.png")
    assert resolve_inside(root, "images/c.png") == root / "images" / "c.png"


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_relative_path(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"a")
    assert relative_path(root, root / "sub" / "a.png") == "sub/a.png"
    assert relative_path(root, "sub/a.png") == "sub/a.png"
    (tmp_path / "out.png").write_bytes(b"o")
    (root / "link.png").symlink_to(tmp_path / "out.png")
    with pytest.raises(PathEscape, match="outside the dataset root"):
        relative_path(root, "link.png")
    with pytest.raises(PathEscape, match="outside the dataset root"):
        relative_path(root, tmp_path / "out.png")
    with pytest.raises(PathEscape):
        relative_path(root, "../out.png")
