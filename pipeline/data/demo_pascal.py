"""Procedural datasets in the PASCAL-Context multi-task layout and as an unlabelled image folder.

The second and third demo datasets of a heterogeneous run (issue 15): a different label set from the
NYUD demo (:mod:`.demo`), read by the existing ``pascal`` and ``folder`` readers (:mod:`.formats`).
Scenes reuse the NYUD demo's ray caster (floor, back wall, a picture) with PASCAL VOC object classes
and, in most scenes, a person built from primitives whose parts are labelled:

- ``JPEGImages/<id>.jpg``: the shaded image (JPEG quality 90);
- ``semseg/pascal-context/<id>.png``: the 21-class convention the reader expects, stored as is:
  0 background (wall, floor, picture), VOC classes 1..20 (here bottle 5, chair 9, diningtable 11,
  person 15, pottedplant 16, sofa 18, tvmonitor 20); every pixel is labelled (no 255);
- ``human_parts/<id>.png``: 0 background, person parts 1 head, 2 torso, 3 upper arms, 4 lower arms,
  5 upper legs, 6 lower legs (the 7-class grouping of :data:`~sak.pipeline.tasks.pascal.HUMAN_PART_GROUPS`);
  written for every image, all 0 without a person, as PASCAL-Part has a file per image;
- ``sal_distill/<id>.png``: 255 on objects (semseg class > 0), else 0;
- ``normals_distill/<id>.png``: analytic normals as (n + 1) / 2 * 255, like the NYUD demo;
- ``pascal-context/trainval/<id>.mat``: the context ``LabelMap`` (uint16) the edge label is derived from,
  as for the real set (``sak.pipeline.tasks.pascal.context_boundaries``: thinned Laplacian boundaries).
  Its ids are the demo's own stand-ins for the 459 context classes (:data:`CONTEXT_IDS`), one per
  class, so edges are the class boundaries; a person is one context class (parts draw no edges);
- ``ImageSets/Context/{train,val}.txt``: the first 75% of ids (rounded) train, the rest val.

No depth: the real PASCAL-Context set has none. Files are bit-identical for the same seed (the .mat
header's creation date is fixed); each sample depends only on (seed, index), and the pascal and folder
sets draw other scenes than the NYUD demo for the same seed.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...manifests.errors import DatasetError
from .demo import _FAR, _LIGHT, _box, _Buffer, _cylinder, _plane, _rays, _save_png, _sphere, camera_intrinsics

log = logging.getLogger(__name__)

#: Background stuff (semseg 0), as internal class ids above the VOC range.
WALL, FLOOR, PICTURE = 100, 101, 102
PERSON = 15
#: VOC class -> (shape, base RGB colour in 0..1, texture) of the objects standing on the floor.
OBJECT_CLASSES: dict[int, tuple[str, tuple[float, float, float], str]] = {
    5: ("cylinder", (0.20, 0.60, 0.30), "plain"),  # bottle: green
    9: ("box", (0.50, 0.30, 0.12), "stripes"),  # chair: brown planks
    11: ("box", (0.85, 0.70, 0.45), "plain"),  # diningtable: light wood
    16: ("sphere", (0.15, 0.50, 0.15), "dots"),  # pottedplant: dark green, dotted
    18: ("box", (0.75, 0.15, 0.20), "plain"),  # sofa: red
    20: ("box", (0.10, 0.10, 0.12), "plain"),  # tvmonitor: black
}
_COLOURS = {WALL: (0.70, 0.74, 0.80), FLOOR: (0.45, 0.45, 0.40), PICTURE: (0.85, 0.80, 0.20),
            PERSON: (0.85, 0.60, 0.45), **{c: v[1] for c, v in OBJECT_CLASSES.items()}}
#: Demo stand-ins for PASCAL-Context's 459 context class ids (LabelMap values), one per class.
CONTEXT_IDS = {WALL: 427, FLOOR: 158, PICTURE: 284, PERSON: 259, 5: 31, 9: 72, 11: 98, 16: 283, 18: 368, 20: 416}
#: Person part ids (human_parts png values).
HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = 1, 2, 3, 4, 5, 6
#: Streams of ``default_rng([seed, index, stream])``: other scenes than the NYUD demo's for the same seed.
PASCAL_STREAM, FOLDER_STREAM = 21, 22


class _PartBuffer(_Buffer):
    """The NYUD demo's z-buffer plus a person-part id per pixel."""

    def __init__(self, shape: tuple[int, int]):
        super().__init__(shape)
        self.part = np.zeros(shape, dtype=np.uint8)

    def hit(self, t: np.ndarray, normal: np.ndarray, cls: int, uv: np.ndarray, part: int | np.ndarray = 0) -> None:
        win = np.isfinite(t) & (t > 1e-6) & (t < self.t)  # the same rule as _Buffer.hit, before it moves t
        self.part[win] = part[win] if isinstance(part, np.ndarray) else part
        super().hit(t, normal, cls, uv)


def _person(buf: _PartBuffer, d: np.ndarray, x: float, z: float, floor: float, s: float) -> None:
    """A standing person of height ~1.75 s at (x, z): legs, torso, arms (cylinders, a box), a head (sphere)."""
    def parted(t: np.ndarray, n: np.ndarray, split_y: float, upper: int, lower: int) -> None:
        y = d[..., 1] * np.where(np.isfinite(t), t, 0.0)
        buf.hit(t, n, PERSON, d[..., :2] * 0, np.where(y > split_y, lower, upper).astype(np.uint8))

    hip, shoulder = floor - 0.9 * s, floor - 1.45 * s
    for side in (-1.0, 1.0):
        t, n = _cylinder(d, x + side * 0.11 * s, z, 0.08 * s, hip, floor)
        parted(t, n, floor - 0.45 * s, UPPER_LEG, LOWER_LEG)
        t, n = _cylinder(d, x + side * 0.29 * s, z, 0.06 * s, shoulder, hip + 0.05 * s)
        parted(t, n, floor - 1.17 * s, UPPER_ARM, LOWER_ARM)
    t, n = _box(d, np.array([x, (hip + shoulder) / 2, z]), np.array([0.21 * s, (hip - shoulder) / 2, 0.12 * s]), 0.0)
    buf.hit(t, n, PERSON, d[..., :2] * 0, TORSO)
    t, n = _sphere(d, np.array([x, shoulder - 0.15 * s, z]), 0.13 * s)
    buf.hit(t, n, PERSON, d[..., :2] * 0, HEAD)


def _render(rng: np.random.Generator, height: int, width: int) -> _PartBuffer:
    """One room with VOC objects and (70% of scenes) a person; normals in the camera frame."""
    pitch = rng.uniform(0.05, 0.25)
    c, s = np.cos(pitch), np.sin(pitch)
    cam_to_world = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    d = _rays(height, width) @ cam_to_world.T
    buf = _PartBuffer((height, width))
    cam_h, wall_z = rng.uniform(1.2, 1.7), rng.uniform(4.5, 7.0)
    f, _, _ = camera_intrinsics(height, width)
    half_fov = (width / 2) / f
    t = _plane(d, 1, cam_h)
    buf.hit(t, np.array([0.0, -1.0, 0.0]), FLOOR, (d * t[..., None])[..., [0, 2]])
    t_wall = _plane(d, 2, wall_z)
    p = d * t_wall[..., None]
    buf.hit(t_wall, np.array([0.0, 0.0, -1.0]), WALL, p[..., [0, 1]])
    if rng.random() < 0.5:  # a picture on the back wall
        x0, y0 = rng.uniform(-0.6, 0.3) * half_fov * wall_z, cam_h - rng.uniform(1.5, 2.2)
        w, h = rng.uniform(0.8, 1.6), rng.uniform(0.4, 0.8)
        inside = (p[..., 0] > x0) & (p[..., 0] < x0 + w) & (p[..., 1] > y0) & (p[..., 1] < y0 + h)
        buf.hit(np.where(inside, t_wall - 1e-4, np.inf), np.array([0.0, 0.0, -1.0]), PICTURE, p[..., [0, 1]])
    classes = list(OBJECT_CLASSES)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.choice(classes))
        shape = OBJECT_CLASSES[cls][0]
        z = rng.uniform(2.0, wall_z - 0.8)
        x = rng.uniform(-0.7, 0.7) * half_fov * z
        size = rng.uniform(0.25, 0.6)
        if shape == "box":
            half = np.array([size * rng.uniform(0.8, 1.6), rng.uniform(0.2, 0.6), size])
            t, n = _box(d, np.array([x, cam_h - half[1], z]), half, rng.uniform(-0.6, 0.6))
        elif shape == "sphere":
            t, n = _sphere(d, np.array([x, cam_h - size, z]), size)
        else:
            t, n = _cylinder(d, x, z, size * 0.35, cam_h - rng.uniform(0.4, 0.9), cam_h)
        buf.hit(t, n, cls, np.stack([(d * t[..., None])[..., 0] - x, (d * t[..., None])[..., 1]], -1))
    if rng.random() < 0.7:
        z = rng.uniform(2.2, wall_z - 0.6)
        _person(buf, d, rng.uniform(-0.5, 0.5) * half_fov * z, z, cam_h, rng.uniform(0.85, 1.05))
    buf.n = buf.n @ cam_to_world
    return buf


def _shade(rng: np.random.Generator, buf: _PartBuffer) -> np.ndarray:
    colours = np.zeros(buf.cls.shape + (3,))
    for c, rgb in _COLOURS.items():
        colours[buf.cls == c] = np.asarray(rgb) * rng.uniform(0.92, 1.08, size=3)  # fixed class order
    tex = np.ones(buf.cls.shape)
    u, v = buf.uv[..., 0], buf.uv[..., 1]
    tex = np.where(buf.cls == FLOOR, np.where((np.floor(u * 3.0) % 2) > 0, 1.06, 0.86), tex)  # floor boards
    for c, (_, _, kind) in OBJECT_CLASSES.items():
        if kind == "stripes":
            tex = np.where(buf.cls == c, np.where((np.floor(v * 9.0) % 2) > 0, 1.05, 0.78), tex)
        elif kind == "dots":
            tex = np.where(buf.cls == c, np.where(np.sin(u * 30) * np.sin(v * 30) > 0.4, 0.7, 1.05), tex)
    tex = np.where(buf.part == TORSO, 0.55, tex)  # a darker shirt
    shading = 0.35 + 0.65 * np.clip(buf.n @ _LIGHT, 0.0, 1.0)
    img = colours * (shading * tex)[..., None] + rng.normal(0.0, 0.02, size=colours.shape)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_pascal_sample(seed: int, index: int, size: tuple[int, int] = (72, 96), *,
                         stream: int = PASCAL_STREAM) -> dict[str, np.ndarray]:
    """One scene as arrays: image (H,W,3) uint8, semseg (H,W) uint8 0..20, parts (H,W) uint8 0..6,
    saliency (H,W) uint8 0/255, normals (H,W,3) float32 unit vectors, context (H,W) uint16 LabelMap."""
    height, width = size
    rng = np.random.default_rng([seed, index, stream])
    buf = _render(rng, height, width)
    if not (buf.t < _FAR).all():  # cannot happen: the back wall closes the room
        raise DatasetError(f"demo scene {index} (seed {seed}) has pixels without geometry; this is a bug in sak")
    normals = buf.n / np.linalg.norm(buf.n, axis=-1, keepdims=True)
    semseg = np.where(buf.cls >= WALL, 0, buf.cls).astype(np.uint8)
    lut = np.zeros(256, dtype=np.uint16)
    for c, cid in CONTEXT_IDS.items():
        lut[c] = cid
    return {
        "image": _shade(rng, buf),
        "semseg": semseg,
        "parts": np.where(buf.cls == PERSON, buf.part, 0).astype(np.uint8),
        "saliency": np.where(semseg > 0, 255, 0).astype(np.uint8),
        "normals": normals.astype(np.float32),
        "context": lut[buf.cls],
    }


def _save_mat(label_map: np.ndarray, path: Path) -> None:
    """A MATLAB v5 file holding ``LabelMap``, with a fixed header text (scipy writes the current date there)."""
    import scipy.io  # a dependency, imported where used as pipeline.tasks.pascal does

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"LabelMap": label_map}, do_compression=False)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by sak demo-data".ljust(116)
    path.write_bytes(bytes(data))


def _check(n: int, size: tuple[int, int], what: str) -> tuple[int, int]:
    height, width = (int(size[0]), int(size[1]))
    if n < 2:
        raise DatasetError(f"{what} needs n >= 2 (one train and one val image), got n={n}")
    if height < 8 or width < 8:
        raise DatasetError(f"demo images must be at least 8x8 pixels, got size={size} (height, width)")
    return height, width


def make_demo_pascal(out: str | os.PathLike[str], *, n: int = 96, size: tuple[int, int] = (72, 96),
                     seed: int = 0) -> Path:
    """Write ``n`` procedural scenes of ``size`` = (height, width) in the PASCAL-Context layout under ``out``."""
    height, width = _check(n, size, "make_demo_pascal")
    root = Path(out)
    subs = ("JPEGImages", "semseg/pascal-context", "human_parts", "sal_distill", "normals_distill",
            "pascal-context/trainval", "ImageSets/Context")
    for sub in subs:
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"2008_{i:06d}" for i in range(n)]
    for i, sid in enumerate(ids):
        s = render_pascal_sample(seed, i, (height, width))
        Image.fromarray(s["image"]).save(root / "JPEGImages" / f"{sid}.jpg", format="JPEG", quality=90)
        _save_png(s["semseg"], root / "semseg" / "pascal-context" / f"{sid}.png")
        _save_png(s["parts"], root / "human_parts" / f"{sid}.png")
        _save_png(s["saliency"], root / "sal_distill" / f"{sid}.png")
        _save_png(np.round((s["normals"] + 1.0) / 2.0 * 255.0).astype(np.uint8), root / "normals_distill" / f"{sid}.png")
        _save_mat(s["context"], root / "pascal-context" / "trainval" / f"{sid}.mat")
    n_train = min(n - 1, max(1, round(n * 0.75)))
    (root / "ImageSets" / "Context" / "train.txt").write_text("".join(f"{s}\n" for s in ids[:n_train]))
    (root / "ImageSets" / "Context" / "val.txt").write_text("".join(f"{s}\n" for s in ids[n_train:]))
    log.info("wrote %d PASCAL-Context demo scenes (%dx%d, seed %d) to %s", n, height, width, seed, root)
    return root


def make_demo_folder(out: str | os.PathLike[str], *, n: int = 96, size: tuple[int, int] = (64, 64),
                     seed: int = 0) -> Path:
    """Write ``n`` unlabelled scenes as ``train/<id>.jpg`` (first 75%) and ``val/<id>.jpg`` under ``out``."""
    height, width = _check(n, size, "make_demo_folder")
    root = Path(out)
    n_train = min(n - 1, max(1, round(n * 0.75)))
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = render_pascal_sample(seed, i, (height, width), stream=FOLDER_STREAM)
        path = root / ("train" if i < n_train else "val") / f"{i:06d}.jpg"
        Image.fromarray(s["image"]).save(path, format="JPEG", quality=90)
    log.info("wrote %d unlabelled demo images (%dx%d, seed %d) to %s", n, height, width, seed, root)
    return root
