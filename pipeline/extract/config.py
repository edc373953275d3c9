"""The configuration of one extraction run (:class:`ExtractConfig`): teachers, datasets, spec options, execution."""

from __future__ import annotations

from dataclasses import dataclass

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from ...manifests.sizes import parse_hw
from ..data.augment import POLICIES as VIEW_POLICIES
from ..data.images import ORIENTATIONS
from ..store.claims import DEFAULT_LEASE_SECONDS
from ..store.spec import DTYPES, INPUT_PROTOCOLS
from .forward import DEFAULT_MIN_COSINE


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(Config):
    """One extraction run. ``seed`` seeds random-init weights and the view sampler."""

    cache: str
    teachers: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # dataset names in the cache; empty: all indexed (or just `data`)
    data: str | None = None  # a dataset folder to index into the cache first
    data_name: str | None = None  # its name (default: the layout's or folder's name)
    replace: bool = False  # let `data` replace an index of that name from another root or with images removed/changed
    orientation: str | None = None  # decode policy in the spec: exif (EXIF tag applied) | raw; None: exif, raw for native
    weights: tuple[str, ...] = ()  # one weights file per teacher, same order (or none)
    random_init: bool = False
    seed: int = 0
    layers: tuple[int, ...] | None = None  # default: each teacher's default layers
    input_protocol: str = "student"  # official: teachers take the student's tensor at img_size; "native": own square
    img_size: tuple[int, int] | None = None  # student protocol: the student's (H, W); default: aug_crop, else the images' max
    resolution: int | None = None  # native protocol: square input size; default: each teacher's native size
    dtype: str = "float16"
    quant: str | None = None  # dtype int8: one of quant.QUANT_MODES (default DEFAULT_QUANT, token-channel-offset)
    codec: str = "none"  # feature-array compression of new segments: none | lz4 | zstd
    min_cosine: float = DEFAULT_MIN_COSINE  # int8: stop when a layer's standardized mean cosine on a batch is below
    force_quant: bool = False  # int8: keep going below min_cosine (warn; the fidelity is recorded)
    encode_threads: int | None = None  # writer encode threads per store; None: follow the output rate
    views: int = 1
    aug: str = "none"
    aug_crop: tuple[int, int] | None = None  # (H, W) of augmented views; student protocol: img_size; native: None = each image's own size
    keep_prefix: bool = False
    batch_size: int = 32
    device: str = "auto"
    workers: int = 1  # dask worker processes; 1 runs in this process
    io_threads: int = 4  # decode/augment/preprocess threads per worker
    scheduler: str | None = None  # tcp://host:port of an existing dask cluster
    limit: int | None = None  # first N images (after dedup) only
    retry_failed: bool = False
    segment_size: int = 1024
    repair: bool = False  # verify each store first and uncommit its damaged samples, so this run extracts them again
    claims: bool = True  # claim blocks in the store (expiring leases) so concurrent runs split the work; False: no claims
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # a killed writer's blocks are taken over after this (renewed while running)

    def __post_init__(self) -> None:
        for name in ("cache", "data"):  # accept Path objects; the config stays JSON-able
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        for name in ("teachers", "datasets", "weights"):  # a single name is a one-element tuple
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.teachers:
            raise ConfigError("name at least one teacher: --teacher dinov2 (repeat --teacher for more)")
        if len(set(self.teachers)) != len(self.teachers):
            raise ConfigError(f"teacher names repeat in {list(self.teachers)}; name each teacher once")
        if self.weights and len(self.weights) != len(self.teachers):
            raise ConfigError(f"pass one --weights file per --teacher ({len(self.teachers)}), got {len(self.weights)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.orientation is None:  # native is sak's first behaviour, kept to the byte (and spec_id): raw pixels
            object.__setattr__(self, "orientation", "raw" if self.input_protocol == "native" else "exif")
        if self.orientation not in ORIENTATIONS:
            raise ConfigError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.aug not in VIEW_POLICIES:
            raise ConfigError(f"aug must be one of {VIEW_POLICIES} (sak: the official pipeline; sak-v1: sak's first), got {self.aug!r}")
        if self.views < 1 or (self.aug == "none" and self.views != 1):
            raise ConfigError(f"--views {self.views}: K > 1 views need --aug sak (and K >= 1)")
        if self.aug_crop is not None:
            if self.aug == "none":
                raise ConfigError(f"--aug-crop {self.aug_crop} needs --aug sak and a positive HxW size")
            object.__setattr__(self, "aug_crop", parse_hw(self.aug_crop, "--aug-crop"))
        self._check_protocol()
        if not 0.0 < self.min_cosine <= 1.0:
            raise ConfigError(f"--min-cosine must be in (0, 1], got {self.min_cosine}")
        if self.encode_threads is not None and self.encode_threads < 1:
            raise ConfigError(f"--encode-threads must be >= 1 (or left out: it follows the output rate), got {self.encode_threads}")
        if self.quant is not None and self.dtype != "int8":
            raise ConfigError(f"--quant {self.quant} is for --dtype int8 (got --dtype {self.dtype}); drop --quant or pass --dtype int8")
        for name in ("batch_size", "workers", "io_threads", "segment_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lease_seconds > 0:
            raise ConfigError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be >= 0, got {self.limit}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.scheduler is not None and "://" not in self.scheduler:
            raise ConfigError(f"scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")

    def _check_protocol(self) -> None:
        if self.input_protocol not in INPUT_PROTOCOLS:
            raise ConfigError(f"--input-protocol must be one of {', '.join(INPUT_PROTOCOLS)}, got {self.input_protocol!r}")
        if self.img_size is not None:
            object.__setattr__(self, "img_size", parse_hw(self.img_size, "--img-size"))
        if self.input_protocol == "native":
            if self.img_size is not None:
                raise ConfigError("--img-size is the student protocol's input size; with --input-protocol native use --native-size")
            return
        if self.resolution is not None:
            raise ConfigError(
                "--native-size sets a teacher's native square (--input-protocol native); the student protocol builds "
                "every teacher at --img-size HxW"
            )
        if self.aug != "none":  # an augmented view is the student's input: one size for both
            if self.img_size is not None and self.aug_crop is not None and self.aug_crop != self.img_size:
                raise ConfigError(f"--aug-crop {self.aug_crop} differs from --img-size {self.img_size}: under the student "
                                  "protocol the view is the student's input; pass one of them")
            size = self.img_size or self.aug_crop  # None: both inferred from the images (student_size)
            object.__setattr__(self, "img_size", size)
            object.__setattr__(self, "aug_crop", size)
