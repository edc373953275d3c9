"""FeatureSpec: everything that changes the numbers in a feature store, and its short hash.

Two extractions with equal specs produce interchangeable features; anything that
would change a single stored value belongs here. ``spec_id`` names the store
directory, so a store is exactly one spec and two specs never share a store.

Teacher-input protocol (``input_protocol``):

- ``student`` (the official SAK recipe; the default of new extractions): the teacher is built at
  the student's input size ``img_size`` (H, W) and receives the student's own tensor: the view at
  ``img_size``, ImageNet mean/std, centre-padded with 0 (normalized space) when the image is
  smaller; SAM alone is resized (longest side 1024, bicubic, no antialias, ``int(x*scale+0.5)``,
  zeros at the bottom/right). ``resize`` is then ``none`` (ViTs) or ``longest-bicubic`` (SAM).
- ``native`` (sak's first behaviour, an explicit option): each image squashed to the teacher's
  native square with its own mean/std (``resize`` ``squash`` / ``longest-pad``); no ``img_size``.

Augmentation policy version (``aug_version``): stores written before issue 12 record ``aug="sak"``
for sak's first augmentation policy; the official pipeline (``custom_transforms.py``) is
``aug="sak", aug_version=2``. ``sak-cache extract --aug sak`` writes version 2, ``--aug sak-v1``
version 1, so an old store is never extended with views of the other policy (each view also
records its policy in its JSON, which is what replay reads).

Store dtype (``dtype``/``quant``): float16 (default), bfloat16, float32, or int8 codes with float32
scales (``quant``: one of :data:`.quant.QUANT_MODES`; see :mod:`.quant`). ``codec`` says how
new segments compress their feature arrays (``none``, ``lz4``, ``zstd``); it is recorded but not
hashed (:data:`UNHASHED`): each array's zarr metadata says how it was written, readers follow it, and
a store may hold segments of several codecs. ``spec.json`` files without it mean ``zstd``
(:data:`ABSENT_CODEC`, applied by ``FeatureStore.open``).

Image orientation (``orientation``): ``exif`` (new extractions) means images were decoded with their
EXIF Orientation tag applied (the pixels viewers show), ``raw`` the stored pixel order. A ``spec.json``
without the field (every store before issue 14) means ``raw`` and keeps its ``spec_id``
(:data:`LEGACY_VALUES`); training decodes images with the policy of the store it reads
(:data:`sak.pipeline.data.images.ORIENTATIONS`).

Hash rule and compatibility: ``spec_id`` hashes the canonical JSON of :meth:`FeatureSpec.identity`,
which leaves out every field added after format version 1 while it holds its legacy value
(:data:`LEGACY_VALUES`: ``input_protocol="native"``, ``img_size=None``, ``aug_version=1``). A ``spec.json`` written
before these fields existed therefore opens as ``native`` with the same ``spec_id`` and store
name as before; a new field changes the hash only when it takes a new value. Add any future
field the same way (with its legacy value in :data:`LEGACY_VALUES`), or bump
:data:`FORMAT_VERSION` when a stored value changes meaning.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...manifests.config import Config, canonical_json, config_hash
from ...manifests.errors import ConfigError
from ..data.images import ORIENTATIONS
from .quant import QUANT_MODES

#: Bump when the on-disk layout or the meaning of a stored value changes.
FORMAT_VERSION = 1

DTYPES = ("float16", "bfloat16", "float32", "int8")
#: Compression of feature arrays: none (the default: fp16/int8 features compress by under 10%, and
#: decoding would bound reads), blosc-lz4 with byte shuffle, or zstd level 3 (every store before issue 13).
CODECS = ("none", "lz4", "zstd")
NATIVE_RESIZE = ("squash", "longest-pad")
STUDENT_RESIZE = ("none", "longest-bicubic")
RESIZE_POLICIES = NATIVE_RESIZE + STUDENT_RESIZE
AUG_POLICIES = ("none", "sak")
INPUT_PROTOCOLS = ("student", "native")

#: Fields added after format version 1, with the value every older store implicitly has.
#: At that value a field is left out of the hashed identity, so older stores keep their spec_id.
LEGACY_VALUES: dict[str, Any] = {"input_protocol": "native", "img_size": None, "aug_version": 1, "quant": None,
                                 "orientation": "raw"}
#: Recorded in spec.json but never hashed: how bytes are compressed changes no stored number.
UNHASHED = ("codec",)
#: The codec of a spec.json written before the field existed.
ABSENT_CODEC = "zstd"
#: Augmentation policy versions: 1 = sak's first policy (``--aug sak-v1``), 2 = the official one (``--aug sak``).
AUG_VERSIONS = (1, 2)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec(Config):
    """The identity of one feature store.

    ``weights`` is ``hub:<timm or open_clip tag>``, ``file:<sha256 of the weights file>``
    or ``random-init:<seed>``; the last one is loudly reported by every command.
    """

    format_version: int = FORMAT_VERSION
    teacher: str  # canonical source name, e.g. "timm:vit_base_patch14_dinov2.lvd142m"
    weights: str
    layers: tuple[int, ...]
    resolution: tuple[int, int]  # (H, W) of the teacher input
    resize: str  # native: "squash" | "longest-pad" (SAM); student: "none" | "longest-bicubic" (SAM)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    width: int  # channels of every stored layer map
    grid: tuple[int, int]  # (h, w) of every stored layer map
    num_prefix_tokens: int = 0  # CLS/register tokens the teacher emits
    keep_prefix: bool = False  # store them as prefix_<i>
    dtype: str = "float16"
    views: int = 1  # augmented views per image (1 with aug "none")
    aug: str = "none"  # augmentation policy for the views
    aug_seed: int = 0  # seed of the view sampler (views are a function of image sha256, view index and seed)
    aug_crop: tuple[int, int] | None = None  # (H, W) of augmented views; None = each image's own size
    input_protocol: str = "native"  # "student" (official; new extractions) or "native"; absent in older spec.json
    img_size: tuple[int, int] | None = None  # student protocol: the student's (H, W) input the teacher was fed
    aug_version: int = 1  # with aug "sak": 1 = sak's first policy (older stores), 2 = the official pipeline
    quant: str | None = None  # dtype int8: one of quant.QUANT_MODES (see store/quant.py)
    codec: str = "none"  # feature-array compression of new segments; not hashed (UNHASHED); absent = "zstd"
    orientation: str = "raw"  # "exif" (new extractions): EXIF orientation applied on decode; absent = "raw"

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"feature spec format version {self.format_version} is not supported by this sak "
                f"(supports {FORMAT_VERSION}); upgrade sak or extract again."
            )
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ConfigError(f"layers must be distinct non-negative block indices, got {self.layers}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if (self.dtype == "int8") != (self.quant is not None) or (self.quant is not None and self.quant not in QUANT_MODES):
            raise ConfigError(
                f"dtype int8 needs quant one of {QUANT_MODES} and other dtypes none; got dtype {self.dtype!r}, "
                f"quant {self.quant!r} (pass --dtype int8 --quant token-channel-offset, or --dtype float16)"
            )
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {CODECS}, got {self.codec!r} (pass --codec none|lz4|zstd)")
        if self.orientation not in ORIENTATIONS:
            raise ConfigError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.aug not in AUG_POLICIES:
            raise ConfigError(f"aug must be one of {AUG_POLICIES}, got {self.aug!r}")
        if self.aug_version not in AUG_VERSIONS or (self.aug == "none" and self.aug_version != 1):
            raise ConfigError(f"aug_version must be one of {AUG_VERSIONS} (1 without augmentation), got {self.aug_version}")
        if self.views < 1:
            raise ConfigError(f"views must be >= 1, got {self.views}")
        if self.aug == "none" and self.views != 1:
            raise ConfigError("--views K > 1 needs an augmentation policy: pass --aug sak")
        if self.aug_crop is not None and (self.aug == "none" or min(self.aug_crop) <= 0):
            raise ConfigError(
                f"aug_crop {self.aug_crop} needs --aug sak and positive sizes; leave it unset without augmentation"
            )
        if min(self.resolution) <= 0 or min(self.grid) <= 0 or self.width <= 0:
            raise ConfigError(f"resolution, grid and width must be positive: {self.resolution}, {self.grid}, {self.width}")
        self._check_protocol()

    def _check_protocol(self) -> None:
        if self.input_protocol not in INPUT_PROTOCOLS:
            raise ConfigError(f"input_protocol must be one of {INPUT_PROTOCOLS}, got {self.input_protocol!r}")
        if self.input_protocol == "native":
            if self.img_size is not None or self.resize not in NATIVE_RESIZE:
                raise ConfigError(
                    f"the native protocol has no img_size and resizes by {NATIVE_RESIZE}; got img_size {self.img_size}, "
                    f"resize {self.resize!r}: pass --input-protocol student with --img-size"
                )
            return
        if self.img_size is None or min(self.img_size) <= 0:
            raise ConfigError(f"the student protocol needs the student's input size: pass --img-size HxW (got {self.img_size})")
        if self.resize not in STUDENT_RESIZE:
            raise ConfigError(f"the student protocol resizes by {STUDENT_RESIZE}, got {self.resize!r}")
        if self.aug != "none" and self.aug_crop != self.img_size:
            raise ConfigError(
                f"augmented views of the student protocol are the student's input: aug_crop {self.aug_crop} must equal "
                f"img_size {self.img_size} (pass --aug-crop {self.img_size[0]}x{self.img_size[1]} or leave it out)"
            )

    def identity(self) -> dict[str, Any]:
        """What ``spec_id`` hashes: every field, less those still at their legacy value (module docstring)."""
        data = self.to_dict()
        for name in UNHASHED:
            del data[name]
        for name, legacy in LEGACY_VALUES.items():
            if data[name] == legacy:
                del data[name]
        return data

    def config_hash(self, length: int = 12) -> str:
        return config_hash(self.identity(), length)

    @property
    def spec_id(self) -> str:
        return self.config_hash(12)

    @property
    def random_init(self) -> bool:
        return self.weights.startswith("random-init")

    @property
    def short_teacher(self) -> str:
        """A filesystem-safe teacher name for the store directory."""
        arch = self.teacher.split(":", 1)[-1]
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in arch)

    @property
    def store_name(self) -> str:
        return f"{self.short_teacher}-{self.spec_id}"


#: Which command-line flag sets each spec field, for SpecMismatch messages.
_FLAG = {
    "layers": "--layers", "resolution": "--native-size", "dtype": "--dtype", "views": "--views", "aug": "--aug",
    "keep_prefix": "--keep-prefix", "weights": "--weights / --random-init", "aug_seed": "--seed", "teacher": "--teacher",
    "input_protocol": "--input-protocol", "img_size": "--img-size", "resize": "--input-protocol", "aug_version": "--aug sak|sak-v1",
    "quant": "--quant", "orientation": "--orientation",
}


def spec_differences(have: FeatureSpec, want: FeatureSpec | dict) -> list[tuple[str, object, object]]:
    """[(field, stored value, asked value)] for the fields that differ."""
    a = have.to_dict()
    b = want.to_dict() if isinstance(want, FeatureSpec) else {k: json.loads(canonical_json(v)) for k, v in want.items()}
    return [(k, a.get(k), b[k]) for k in sorted(b) if a.get(k) != b[k] and k not in UNHASHED]


def mismatch_message(where: str, diffs: list[tuple[str, object, object]]) -> str:
    parts = [f"{k} {v_have!r} (you asked for {v_want!r}; pass {_FLAG.get(k, k)} to match)" for k, v_have, v_want in diffs]
    return (
        f"store {where} was written with " + "; ".join(parts) + ". "
        "Pass the stored values, or extract again (a different spec gets its own store)."
    )


def extract_command(spec: FeatureSpec, cache: object, datasets: Sequence[str]) -> str:
    """The ``sak-cache extract`` command that writes into the store of ``spec`` again, with ``--repair``."""
    args = ["sak-cache", "extract", "--cache", str(cache), "--teacher", spec.teacher, "--layers", ",".join(map(str, spec.layers))]
    for name in datasets:
        args += ["--dataset", name]
    if spec.dtype != "float16":
        args += ["--dtype", spec.dtype]
    if spec.quant:
        args += ["--quant", spec.quant]
    if spec.input_protocol == "native":
        args += ["--input-protocol", "native", "--native-size", str(spec.resolution[0])]
        if spec.aug_crop is not None:
            args += ["--aug-crop", f"{spec.aug_crop[0]}x{spec.aug_crop[1]}"]
    elif spec.img_size is not None:
        args += ["--img-size", f"{spec.img_size[0]}x{spec.img_size[1]}"]
    if spec.aug != "none":
        args += ["--aug", "sak" if spec.aug_version == 2 else "sak-v1", "--views", str(spec.views)]
    args += ["--orientation", spec.orientation]  # explicit: the default depends on the protocol and on sak's version
    if spec.keep_prefix:
        args.append("--keep-prefix")
    if spec.random_init:
        args.append("--random-init")
    elif spec.weights.startswith("file:"):
        args += ["--weights", "<the .safetensors file this store was extracted with>"]
    if spec.aug_seed:
        args += ["--seed", str(spec.aug_seed)]
    return " ".join(shlex.quote(a) if not a.startswith("<") else a for a in args + ["--repair"])
