"""Image decoding: every PIL mode we meet becomes (H, W, 3) uint8; every bad file is a BadImage naming it."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sak.manifests.errors import BadImage
from sak.pipeline.data import images
from sak.pipeline.data.images import decode_rgb, open_image_size


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_rgb_png_is_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(rgb), "a.png")
    out = decode_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)
    assert open_image_size(path) == (7, 5)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    out = decode_rgb(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_allclose(out[0, 2], np.array([200, 100, 50]) * 128 / 255, atol=1)


def test_la_is_composited_gray(tmp_path):
    la = np.array([[[90, 255], [90, 0]]], dtype=np.uint8)
    out = decode_rgb(_save(tmp_path, Image.fromarray(la, "LA"), "a.png"))
    np.testing.assert_array_equal(out, [[[90, 90, 90], [0, 0, 0]]])


def test_grayscale_l_is_replicated(tmp_path):
    gray = np.array([[0, 17, 255]], dtype=np.uint8)
    out = decode_rgb(_save(tmp_path, Image.fromarray(gray, "L"), "a.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_one_bit(tmp_path):
    img = Image.new("1", (3, 1))
    img.putpixel((1, 0), 1)
    out = decode_rgb(_save(tmp_path, img, "a.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0])
    assert (out[..., 0] == out[..., 2]).all()


def test_palette(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    img.putpixel((1, 0), 0)
    out = decode_rgb(_save(tmp_path, img, "a.png"))
    np.testing.assert_array_equal(out, [[[200, 150, 100], [10, 20, 30]]])


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    path = _save(tmp_path, img, "a.jpg", quality=100)
    out = decode_rgb(path)
    assert out.shape == (8, 8, 3)
    assert out.min() >= 250


def test_sixteen_bit_png_is_rescaled_by_range(tmp_path):
    arr = np.array([[100, 1100], [600, 100]], dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(arr), "a.png")
    with Image.open(path) as img:
        assert img.mode == "I;16"
    out = decode_rgb(path)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 0]])
    assert (out[..., 0] == out[..., 1]).all()


def _assert_bad(path: Path, *fns) -> list[str]:
    messages = []
    for fn in fns or (decode_rgb, open_image_size):
        with pytest.raises(BadImage) as info:
            fn(path)
        assert str(path) in str(info.value)
        messages.append(str(info.value))
    return messages


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    msg, _ = _assert_bad(path)
    assert "empty" in msg


def test_missing_file(tmp_path):
    msg, _ = _assert_bad(tmp_path / "nope.png")
    assert "not found" in msg


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    _assert_bad(path)


def test_truncated_png(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    full = _save(tmp_path, Image.fromarray(rgb), "full.png")
    data = full.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    msg = _assert_bad(path, decode_rgb)[0]
    assert "truncated or corrupt" in msg


def test_truncated_jpeg(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    full = _save(tmp_path, Image.fromarray(rgb), "full.jpg", quality=95)
    data = full.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_bad(path, decode_rgb)


def test_decompression_bomb_by_pixel_limit(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (20, 10)), "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 199)
    msgs = _assert_bad(path)
    assert all("199" in m for m in msgs)
    monkeypatch.setattr(images, "MAX_PIXELS", 200)
    assert decode_rgb(path).shape == (10, 20, 3)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb_header(tmp_path):
    """A tiny file whose header claims 100k x 100k pixels is refused from the header, never allocated."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 1000)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    msgs = _assert_bad(path)
    assert all("decompression" in m for m in msgs)


def test_decoded_arrays_are_writable(tmp_path):
    # torch.from_numpy on a read-only buffer warns and is undefined behaviour if written to.
    import numpy as np
    from PIL import Image

    from sak.pipeline.data.images import decode_rgb

    for mode, shape in (("RGB", (5, 6, 3)), ("L", (5, 6)), ("RGBA", (5, 6, 4))):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(np.full(shape, 7, np.uint8), mode=mode).save(path)
        rgb = decode_rgb(path)
        assert rgb.flags.writeable and rgb.shape == (5, 6, 3)


# ---------------------------------------------------------------- issue 14: bytes once, sha256, EXIF, regular files


def _exif_png(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="PNG", exif=exif.tobytes())  # PNG: lossless, so pixels compare exactly
    return path


def test_exif_orientation_is_applied_and_raw_keeps_pixel_order(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # 2 rows x 3 columns, all distinct
    path = _exif_png(tmp_path / "rot.png", rgb, 6)  # 6: displayed rotated 90 degrees clockwise
    np.testing.assert_array_equal(decode_rgb(path, orientation="raw"), rgb)
    shown = decode_rgb(path)
    np.testing.assert_array_equal(shown, np.rot90(rgb, k=-1))  # clockwise
    assert shown.shape == (3, 2, 3)
    assert open_image_size(path) == (2, 3) and open_image_size(path, orientation="raw") == (3, 2)
    assert images.image_header(path) == (3, 2, 6)
    flipped = _exif_png(tmp_path / "flip.png", rgb, 2)  # 2: mirrored left-right, same size
    np.testing.assert_array_equal(decode_rgb(flipped), rgb[:, ::-1])
    assert open_image_size(flipped) == (3, 2)


def test_decode_checks_the_indexed_sha256_on_the_bytes_it_decodes(tmp_path):
    rgb = np.full((4, 5, 3), 9, np.uint8)
    path = _save(tmp_path, Image.fromarray(rgb), "a.png")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(decode_rgb(path, sha256=sha), rgb)
    with pytest.raises(BadImage, match="changed since indexing: re-index the dataset") as info:
        decode_rgb(path, sha256="0" * 64, reindex_hint="sak-cache index /d --name d --replace")
    assert "(sak-cache index /d --name d --replace)" in str(info.value) and str(path) in str(info.value)
    np.testing.assert_array_equal(images.decode_bytes(path.read_bytes()), rgb)
