"""Shared benchmark plumbing: arguments, the machine record, alternating timing, RATIO lines.

Rules every benchmark here follows:

* ours and the baseline run in the SAME process, interleaved (A B B A ...) after a warm-up,
  and the reported value is the median of the rounds: drift and other users of a shared
  machine hit both sides alike;
* the result is a ratio, printed as ``RATIO <name> = <value>  (target >= X)  [parts: ...]``
  with the numbers it was computed from; absolute times are only parts;
* the machine (CPU model, cores, load average, torch version, device) is recorded with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATIO_RE = re.compile(
    r"^RATIO (?P<name>[A-Za-z0-9_.\-]+) = (?P<value>[-+0-9.eE]+|nan|inf)  "
    r"\(target (?P<op>>=|<=) (?P<target>[-+0-9.eE]+)\)  \[parts: (?P<parts>.*)\]$"
)

log = logging.getLogger("benchmarks")

# Measured on the shared 2-core CPU this was written on: OpenMP worker threads that spin-wait
# between parallel regions halve a 2-thread ViT forward when other processes compete for the
# cores, and libgomp stops spinning once more threads than cores have entered OpenMP (the
# extractor's and loader's threads do, a bare loop does not). So the two sides of a comparison
# ran in different regimes (a bare forward loop 2x slower than the same forward inside
# extract). Passive waiting puts both in the same one. Set before torch is imported; an
# explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- results -----------------------------------------------------------------------
def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


@dataclass
class Ratio:
    name: str
    value: float
    target: float
    op: str = ">="
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def line(self) -> str:
        parts = ", ".join(f"{k}={fmt(v)}" for k, v in self.parts.items())
        return f"RATIO {self.name} = {fmt(float(self.value))}  (target {self.op} {fmt(float(self.target))})  [parts: {parts}]"


def parse_ratio_lines(text: str) -> list[dict[str, Any]]:
    """The RATIO lines of a benchmark's output as dicts (name, value, op, target, parts text)."""
    out = []
    for line in text.splitlines():
        m = RATIO_RE.match(line.strip())
        if m:
            d = m.groupdict()
            d["value"], d["target"] = float(d["value"]), float(d["target"])
            out.append(d)
    return out


class Bench:
    """Collects one benchmark's ratios, details and machine record; prints and saves them."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.size = size_name(args)
        self.machine = machine_info(args.device)
        self.ratios: list[Ratio] = []
        self.details: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        say(f"# {name}: size {self.size}, device {args.device}, {self.machine['cpu']} "
            f"({self.machine['cores']} cores, load {self.machine['load_avg_start']}), torch {self.machine['torch']}")

    def ratio(self, name: str, value: float, target: float, parts: dict[str, Any], op: str = ">=") -> Ratio:
        r = Ratio(name, float(value), float(target), op, dict(parts))
        self.ratios.append(r)
        print(r.line(), flush=True)
        return r

    def detail(self, key: str, value: Any) -> None:
        self.details[key] = value
        say(f"#   {key}: {json.dumps(value, default=str) if not isinstance(value, str) else value}")

    def finish(self) -> dict[str, Any]:
        self.machine["load_avg_end"] = load_avg()
        self.machine["seconds"] = round(time.perf_counter() - self.t0, 1)
        record = {
            "benchmark": self.name, "size": self.size, "machine": self.machine,
            "ratios": [{**r.__dict__, "met": r.met, "line": r.line()} for r in self.ratios],
            "details": self.details,
        }
        for r in self.ratios:
            if not r.met:
                say(f"# MISSED: {r.name} = {fmt(r.value)} (target {r.op} {fmt(r.target)})")
        say(f"# {self.name} done in {self.machine['seconds']} s (load {self.machine['load_avg_end']})")
        if self.args.json:
            Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.json).write_text(json.dumps(record, indent=2, default=str) + "\n")
        return record


def say(text: str) -> None:
    """A detail line on stderr (stdout carries the RATIO lines)."""
    print(text, file=sys.stderr, flush=True)


# -- machine -----------------------------------------------------------------------
def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "load_avg_start": load_avg(), "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": numpy.__version__,
        "device": device, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    for mod in ("timm", "zarr", "pyarrow", "dask"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # optional in the record
            info[mod] = "n/a"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# -- arguments -----------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke run, not a measurement")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when visible); cuda runs full size")
    p.add_argument("--json", default=None, help="also write the results and the machine record to this file")
    p.add_argument("--workdir", default=os.environ.get("SAK_BENCH_DIR", os.path.join(tempfile.gettempdir(), "sak-bench")),
                   help="generated datasets are kept here for reuse; stores are made fresh below it")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per side (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--keep", action="store_true", help="keep the stores written during the run")
    p.add_argument("-v", "--verbose", action="store_true", help="show sak's log messages")
    return p


def setup(args: argparse.Namespace) -> None:
    """Resolve the device, set threads and logging. Call right after parsing."""
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sak").setLevel(logging.INFO if args.verbose else logging.ERROR)
    for noisy in ("distributed", "dask"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def size_name(args: argparse.Namespace) -> str:
    return "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")


def pick(sizes: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The size preset for this run, with any command-line overrides (args attributes not None) applied."""
    chosen = dict(sizes[size_name(args)])
    for key in list(chosen):
        override = getattr(args, key, None)
        if override is not None:
            chosen[key] = type(chosen[key])(override) if not isinstance(chosen[key], (tuple, list)) else override
    if args.rounds is not None:
        chosen["rounds"] = args.rounds
    return chosen


# -- timing ------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else float("nan")


def alternate(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[Any]]:
    """Run each callable ``warmup`` times, then ``rounds`` times interleaved A B, B A, A B, ...; results per name."""
    names = list(fns)
    for w in range(warmup):
        for n in names:
            say(f"#   warm-up {n} ({w + 1}/{warmup})")
            fns[n]()
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(fns[n]())
            say(f"#   round {r + 1}/{rounds} {n}: {fmt(out[n][-1]) if not isinstance(out[n][-1], dict) else out[n][-1]}")
    return out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- files -------------------------------------------------------------------------
def demo_dataset(workdir: str | Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A procedural NYUD-layout dataset, generated once per (n, size, seed) and reused across runs."""
    from sak.pipeline.data.demo import make_demo_dataset

    root = Path(workdir) / "data" / f"nyud-{n}-{size[0]}x{size[1]}-s{seed}"
    if not (root / ".complete").exists():
        say(f"#   generating {n} demo images of {size[0]}x{size[1]} in {root} (once)")
        make_demo_dataset(root, n=n, size=size, seed=seed)
        (root / ".complete").write_text("ok\n")
    return root


def image_folder(workdir: str | Path, n: int, size: tuple[int, int], base: int = 16, seed: int = 0) -> Path:
    """``n`` distinct JPEG photos-sized images (``train/<i>.jpg``, quality 90), made once and reused.

    Rendering a procedural scene is slow at 480x640, so ``base`` scenes are rendered and
    each file is one of them with its index written into the first pixels (distinct
    content hashes, the same decode cost as a camera JPEG of that size).
    """
    import numpy as np
    from PIL import Image

    from sak.pipeline.data.demo import render_demo_sample

    root = Path(workdir) / "data" / f"jpg-{n}-{size[0]}x{size[1]}-s{seed}"
    if (root / ".complete").exists():
        return root
    say(f"#   generating {n} JPEG images of {size[0]}x{size[1]} in {root} (once)")
    (root / "train").mkdir(parents=True, exist_ok=True)
    scenes = [render_demo_sample(seed, i, size)["image"] for i in range(min(base, n))]
    for i in range(n):
        img = scenes[i % len(scenes)].copy()
        img[0, :8, 0] = np.frombuffer(int(i).to_bytes(8, "little"), dtype=np.uint8)
        Image.fromarray(img).save(root / "train" / f"{i:06d}.jpg", quality=90)
    (root / ".complete").write_text("ok\n")
    return root


def indexed(workdir: str | Path, root: Path, name: str = "nyud", fmt: str = "nyud") -> Path:
    """The dataset index (Parquet) of ``root``, built once; copy it into fresh caches with :meth:`Scratch.fresh_cache`."""
    from sak.pipeline.data.datasets import dataset_index_path, index_dataset, write_dataset_index

    cache = Path(workdir) / "index" / root.name
    path = dataset_index_path(cache, name)
    if not path.exists():
        write_dataset_index(cache, name, index_dataset(root, name=name, fmt=fmt, workers=2), root)
    return path


class Scratch:
    """Fresh directories below ``<workdir>/scratch``; removed on close unless ``keep``."""

    def __init__(self, workdir: str | Path, keep: bool = False) -> None:
        base = Path(workdir) / "scratch"
        base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.keep, self._n = keep, 0

    def new(self, prefix: str = "cache") -> Path:
        self._n += 1
        path = self.root / f"{prefix}-{self._n}"
        path.mkdir(parents=True)
        return path

    def fresh_cache(self, index_path: Path, name: str = "nyud") -> Path:
        cache = self.new("cache")
        (cache / "datasets").mkdir()
        shutil.copy(index_path, cache / "datasets" / f"{name}.parquet")
        return cache

    def close(self) -> None:
        if self.keep:
            say(f"#   kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evict(paths: Iterable[Path]) -> int:
    """Drop the files' clean pages from the OS page cache (posix_fadvise DONTNEED); returns files evicted."""
    n = 0
    for p in paths:
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))
