"""A procedural dataset in the NYUD-v2 multi-task layout, for tests, demos and smoke runs.

Each scene is ray-cast through a pinhole camera (x right, y down, z forward, camera at
the origin, pitched down 6-20 degrees): a floor plane, a back wall, sometimes a side wall and a picture on the
back wall, and 1-3 objects (boxes, spheres, vertical cylinders) standing on the floor.
All labels come from the same geometry, so they agree with each other:

- ``depth/<id>.npy``: float32 z-depth in meters (positive everywhere: the back wall closes the room);
- ``normals/<id>.png``: analytic surface normals, facing the camera, stored as (n + 1) / 2 * 255;
- ``segmentation/<id>.png``: NYUD-40 classes as stored by NYUD (class c as c + 1; wall 1, floor 2, ...);
- ``edge/<id>.png``: 255 where a pixel's right or lower neighbour has another semantic class (4-connected
  boundaries, both sides marked), else 0;
- ``images/<id>.png``: class colour (and texture) x Lambertian shading from the normals + noise.

Object class decides shape and colour, so a student can learn semseg from appearance.
Files are bit-identical for the same seed; each image depends only on (seed, index).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...manifests.errors import DatasetError

log = logging.getLogger(__name__)

#: NYUD-40 class ids (as stored in the png, 1-based) used by the demo scenes.
WALL, FLOOR, PICTURE = 1, 2, 11
#: Object classes: png class id -> (shape, base RGB colour in 0..1, texture).
OBJECT_CLASSES: dict[int, tuple[str, tuple[float, float, float], str]] = {
    3: ("box", (0.55, 0.33, 0.15), "stripes"),  # cabinet: brown, vertical planks
    29: ("box", (0.85, 0.75, 0.35), "plain"),  # box: cardboard yellow
    18: ("sphere", (0.80, 0.20, 0.20), "plain"),  # pillow: red
    40: ("sphere", (0.20, 0.35, 0.85), "dots"),  # otherprop: blue, dotted
    35: ("cylinder", (0.95, 0.95, 0.90), "plain"),  # lamp: white
    33: ("cylinder", (0.30, 0.65, 0.35), "rings"),  # toilet (here: a green drum)
}
_BASE_COLOURS = {WALL: (0.78, 0.76, 0.70), FLOOR: (0.60, 0.45, 0.30), PICTURE: (0.15, 0.15, 0.18)}
_LIGHT = np.array([-0.4, -0.8, -0.45])  # towards the light, camera frame (from upper left, behind the camera)
_LIGHT = _LIGHT / np.linalg.norm(_LIGHT)
_FAR = np.inf


def camera_intrinsics(height: int, width: int) -> tuple[float, float, float]:
    """(focal length in pixels, cx, cy) of the demo camera; pixel (u, v) centres are at u + 0.5, v + 0.5."""
    return 0.9 * width, width / 2.0, height / 2.0


def _rays(height: int, width: int) -> np.ndarray:
    """(H, W, 3) camera-frame ray directions with z = 1, so a hit's ray parameter t is its z-depth."""
    f, cx, cy = camera_intrinsics(height, width)
    u = (np.arange(width) + 0.5 - cx) / f
    v = (np.arange(height) + 0.5 - cy) / f
    d = np.empty((height, width, 3))
    d[..., 0] = u[None, :]
    d[..., 1] = v[:, None]
    d[..., 2] = 1.0
    return d


class _Buffer:
    """Nearest-hit z-buffer: depth, normal, class and a 2-D texture coordinate per pixel."""

    def __init__(self, shape: tuple[int, int]):
        self.t = np.full(shape, _FAR)
        self.n = np.zeros(shape + (3,))
        self.cls = np.zeros(shape, dtype=np.uint8)
        self.uv = np.zeros(shape + (2,))

    def hit(self, t: np.ndarray, normal: np.ndarray, cls: int, uv: np.ndarray) -> None:
        win = np.isfinite(t) & (t > 1e-6) & (t < self.t)
        self.t[win] = t[win]
        self.n[win] = normal[win] if normal.ndim == 3 else normal
        self.cls[win] = cls
        self.uv[win] = uv[win]


def _plane(d: np.ndarray, axis: int, offset: float) -> np.ndarray:
    """Ray parameter of the plane ``p[axis] = offset`` (inf where parallel or behind)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / d[..., axis]
    return np.where(t > 0, t, np.inf)


def _sphere(d: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    a = (d * d).sum(-1)
    b = d @ centre
    disc = b * b - a * (centre @ centre - radius * radius)
    with np.errstate(invalid="ignore"):
        t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    n = (d * t[..., None] - centre) / radius
    return t, n


def _cylinder(d: np.ndarray, cx: float, cz: float, radius: float, y_top: float, y_floor: float):
    """Vertical cylinder from y_top (up, smaller y) to the floor, with a flat top cap."""
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = d[..., 0] * cx + d[..., 2] * cz
    disc = b * b - a * (cx * cx + cz * cz - radius * radius)
    t_side = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    y = d[..., 1] * t_side
    t_side = np.where((y >= y_top) & (y <= y_floor), t_side, np.inf)
    p = d * t_side[..., None]
    n_side = np.stack([(p[..., 0] - cx) / radius, np.zeros_like(a), (p[..., 2] - cz) / radius], -1)
    t_cap = _plane(d, 1, y_top)
    on_cap = (d[..., 0] * t_cap - cx) ** 2 + (d[..., 2] * t_cap - cz) ** 2 <= radius * radius
    t_cap = np.where(on_cap, t_cap, np.inf)
    use_cap = t_cap < t_side
    t = np.where(use_cap, t_cap, t_side)
    n = np.where(use_cap[..., None], np.array([0.0, -1.0, 0.0]), n_side)
    return t, n


def _box(d: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float):
    """Box rotated by ``yaw`` about the vertical axis (slab method in the box frame)."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # box frame -> camera frame
    d_loc = d @ rot  # (R^T d) for each ray
    o_loc = -(rot.T @ centre)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o_loc) / d_loc
        t2 = (half - o_loc) / d_loc
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    t_enter = np.nanmax(t_near, axis=-1)
    t_exit = np.nanmin(t_far, axis=-1)
    t = np.where((t_enter <= t_exit) & (t_enter > 0), t_enter, np.inf)
    axis = np.nanargmax(t_near, axis=-1)
    n_loc = np.zeros(d.shape)
    sign = -np.sign(np.take_along_axis(d_loc, axis[..., None], -1)[..., 0])
    np.put_along_axis(n_loc, axis[..., None], sign[..., None], -1)
    return t, n_loc @ rot.T


def _render_scene(rng: np.random.Generator, height: int, width: int) -> _Buffer:
    """Ray-cast one room in a level world frame seen by a camera pitched down; normals returned in camera frame."""
    pitch = rng.uniform(0.1, 0.35)
    c, s = np.cos(pitch), np.sin(pitch)
    cam_to_world = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    d = _rays(height, width) @ cam_to_world.T  # world rays; the ray parameter t is still the camera z-depth
    buf = _Buffer((height, width))
    cam_h = rng.uniform(1.1, 1.6)  # floor at y = cam_h (y points down)
    wall_z = rng.uniform(4.0, 6.5)
    f, cx_px, _ = camera_intrinsics(height, width)
    half_fov = (width / 2) / f

    t = _plane(d, 1, cam_h)
    p = d * t[..., None]
    buf.hit(t, np.array([0.0, -1.0, 0.0]), FLOOR, p[..., [0, 2]])
    t = _plane(d, 2, wall_z)
    p = d * t[..., None]
    buf.hit(t, np.array([0.0, 0.0, -1.0]), WALL, p[..., [0, 1]])
    if rng.random() < 0.5:  # a side wall, left or right
        side = rng.choice([-1.0, 1.0])
        x_wall = side * rng.uniform(0.55, 0.9) * half_fov * wall_z
        t = _plane(d, 0, x_wall)
        p = d * t[..., None]
        buf.hit(t, np.array([-side, 0.0, 0.0]), WALL, p[..., [2, 1]])
    if rng.random() < 0.6:  # a picture hanging on the back wall: same geometry, another class
        t_wall = _plane(d, 2, wall_z)
        p = d * t_wall[..., None]
        x0 = rng.uniform(-0.5, 0.2) * half_fov * wall_z
        y0 = cam_h - rng.uniform(1.3, 1.9)
        w, h = rng.uniform(0.6, 1.2), rng.uniform(0.3, 0.6)
        inside = (p[..., 0] > x0) & (p[..., 0] < x0 + w) & (p[..., 1] > y0) & (p[..., 1] < y0 + h)
        t = np.where(inside, t_wall - 1e-4, np.inf)  # just in front of the wall; ties go to the picture
        buf.hit(t, np.array([0.0, 0.0, -1.0]), PICTURE, p[..., [0, 1]])

    classes = list(OBJECT_CLASSES)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.choice(classes))
        shape = OBJECT_CLASSES[cls][0]
        z = rng.uniform(1.8, wall_z - 0.8)
        x = rng.uniform(-0.6, 0.6) * half_fov * z
        size = rng.uniform(0.3, 0.7)
        if shape == "box":
            half = np.array([size, rng.uniform(0.3, 0.8), size * rng.uniform(0.6, 1.0)])
            centre = np.array([x, cam_h - half[1], z])
            t, n = _box(d, centre, half, rng.uniform(-0.8, 0.8))
        elif shape == "sphere":
            centre = np.array([x, cam_h - size, z])
            t, n = _sphere(d, centre, size)
        else:
            height_m = rng.uniform(0.5, 1.4)
            t, n = _cylinder(d, x, z, size * 0.7, cam_h - height_m, cam_h)
        p = d * t[..., None]
        uv = np.stack([p[..., 0] - x, p[..., 1]], -1)
        buf.hit(t, n, cls, uv)
    buf.n = buf.n @ cam_to_world  # world -> camera frame (row vectors: n_cam = R^T n_world)
    return buf


def _texture(cls: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Multiplicative texture in 0.75..1.1 per pixel, chosen by class."""
    tex = np.ones(cls.shape)
    u, v = uv[..., 0], uv[..., 1]
    floor = cls == FLOOR
    checker = (np.floor(u * 2.0) + np.floor(v * 2.0)) % 2
    tex[floor] = np.where(checker[floor] > 0, 1.08, 0.85)
    for c, (_, _, kind) in OBJECT_CLASSES.items():
        m = cls == c
        if kind == "stripes":
            tex[m] = np.where((np.floor(u[m] * 8.0) % 2) > 0, 1.05, 0.78)
        elif kind == "dots":
            tex[m] = np.where((np.sin(u[m] * 25) * np.sin(v[m] * 25)) > 0.5, 0.75, 1.05)
        elif kind == "rings":
            tex[m] = np.where((np.floor(v[m] * 10.0) % 2) > 0, 1.05, 0.8)
    return tex


def _edges(cls: np.ndarray) -> np.ndarray:
    """1 where a 4-neighbour has another class (both sides of a boundary)."""
    e = np.zeros(cls.shape, dtype=bool)
    dx = cls[:, 1:] != cls[:, :-1]
    dy = cls[1:, :] != cls[:-1, :]
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    e[1:, :] |= dy
    e[:-1, :] |= dy
    return e


def _shade(rng: np.random.Generator, buf: _Buffer) -> np.ndarray:
    colours = np.zeros(buf.cls.shape + (3,))
    for c, rgb in {**_BASE_COLOURS, **{k: v[1] for k, v in OBJECT_CLASSES.items()}}.items():
        jitter = rng.uniform(0.92, 1.08, size=3)  # per-scene colour variation, drawn in a fixed class order
        colours[buf.cls == c] = np.asarray(rgb) * jitter
    lambert = np.clip(buf.n @ _LIGHT, 0.0, 1.0)
    shading = 0.35 + 0.65 * lambert
    img = colours * (shading * _texture(buf.cls, buf.uv))[..., None]
    img = img + rng.normal(0.0, 0.02, size=img.shape)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_demo_sample(seed: int, index: int, size: tuple[int, int] = (64, 80)) -> dict[str, np.ndarray]:
    """One scene as arrays: image (H,W,3) uint8, semseg (H,W) uint8 (NYUD png values), depth (H,W) float32,
    normals (H,W,3) float32 unit vectors, edge (H,W) uint8 0/255."""
    height, width = size
    rng = np.random.default_rng([seed, index])
    buf = _render_scene(rng, height, width)
    if not np.isfinite(buf.t).all():  # cannot happen: the back wall closes the room
        raise DatasetError(f"demo scene {index} (seed {seed}) has pixels without geometry; this is a bug in sak")
    normals = buf.n / np.linalg.norm(buf.n, axis=-1, keepdims=True)
    return {
        "image": _shade(rng, buf),
        "semseg": buf.cls.copy(),
        "depth": buf.t.astype(np.float32),
        "normals": normals.astype(np.float32),
        "edge": (_edges(buf.cls) * 255).astype(np.uint8),
    }


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def make_demo_dataset(
    out: str | os.PathLike[str], *, n: int = 96, size: tuple[int, int] = (64, 80), seed: int = 0
) -> Path:
    """Write ``n`` procedural scenes of ``size`` = (height, width) in the NYUD-v2 layout under ``out``.

    The first 75% of ids (rounded) go to gt_sets/train.txt, the rest to gt_sets/val.txt.
    Existing files with the same names are overwritten. Returns ``out`` as a Path.
    """
    height, width = (int(size[0]), int(size[1]))
    if n < 2:
        raise DatasetError(f"make_demo_dataset needs n >= 2 (one train and one val image), got n={n}")
    if height < 8 or width < 8:
        raise DatasetError(f"demo images must be at least 8x8 pixels, got size={size} (height, width)")
    root = Path(out)
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(n)]
    for i, sid in enumerate(ids):
        s = render_demo_sample(seed, i, (height, width))
        _save_png(s["image"], root / "images" / f"{sid}.png")
        _save_png(s["semseg"], root / "segmentation" / f"{sid}.png")
        np.save(root / "depth" / f"{sid}.npy", s["depth"], allow_pickle=False)
        _save_png(np.round((s["normals"] + 1.0) / 2.0 * 255.0).astype(np.uint8), root / "normals" / f"{sid}.png")
        _save_png(s["edge"], root / "edge" / f"{sid}.png")
    n_train = min(n - 1, max(1, round(n * 0.75)))
    (root / "gt_sets" / "train.txt").write_text("".join(f"{s}\n" for s in ids[:n_train]))
    (root / "gt_sets" / "val.txt").write_text("".join(f"{s}\n" for s in ids[n_train:]))
    log.info("wrote %d demo scenes (%dx%d, seed %d) to %s", n, height, width, seed, root)
    return root
