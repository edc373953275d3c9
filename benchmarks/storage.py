"""Storage: bytes on disk / raw fp16 and fidelity per layer for every store dtype, quant mode and codec.

Features are SYNTHETIC and HEAVY-TAILED, like trained DINOv2 / CLIP / SAM maps (random-init
teachers lack exactly what makes int8 hard): per layer a different mix of Gaussian tokens with
lognormal channel scales, a few outlier channels (10-100x), channels with a large constant offset,
and a few high-norm tokens (10x). Each variant (fp16 with codec none / lz4 / zstd, bf16, int8 with
each quant mode, the default mode also with lz4 / zstd) is written through the store's own
``SegmentWriter`` (what ``sak-cache extract`` uses) and read back with ``read_rows``:

* size: bytes of every array of a layer (codes, scales, offsets) on disk / rows, over h*w*C*2;
* fidelity: per-token cosine to the float32 features (``quant.token_cosines``), raw and with
  channels standardized (as the distillation loss sees targets), mean and min over tokens, per layer;
* speed: encode (append + commit) and decode (``read_rows`` of every row and layer) in MB/s of raw
  fp16 bytes, all variants interleaved round by round after a warm-up, medians reported.

The ratios: disk / raw fp16 per variant (int8 target 0.5), the worst layer's standardized mean cosine
per variant (target 0.9999 for int8, which is what picks ``quant.DEFAULT_QUANT``), and encode and
decode speed of the default int8 store over fp16 with codec none, and the writer's encode pool over one
encode thread (fp16, codec none).
"""

from __future__ import annotations

from typing import Any

from .common import Bench, Scratch, alternate, dir_bytes, median, parser, pick, say, setup

SIZES = {
    "quick": dict(grid=8, width=64, samples=8, rounds=1),
    "cpu": dict(grid=32, width=768, samples=16, rounds=3),
    "cuda": dict(grid=64, width=768, samples=16, rounds=3),  # SAM's 64x64x768 maps: 6.3 MB per sample per layer in fp16
}
#: Per layer: lognormal sigma of channel scales, outlier channels (count, gain range), constant-offset channels
#: (count, offset in units of the typical channel std), high-norm tokens per sample (count, gain).
LAYERS: dict[int, dict[str, Any]] = {
    0: dict(sigma=0.5, outliers=(2, (10, 30)), offsets=(0, (0, 0)), high_norm=(0, 10)),  # early block: mild
    1: dict(sigma=0.5, outliers=(4, (10, 100)), offsets=(0, (0, 0)), high_norm=(4, 10)),  # DINOv2-like
    2: dict(sigma=0.7, outliers=(2, (50, 100)), offsets=(4, (20, 50)), high_norm=(2, 10)),  # CLIP-like offsets
    3: dict(sigma=1.0, outliers=(6, (10, 100)), offsets=(6, (20, 50)), high_norm=(4, 10)),  # late block: everything
}
VARIANTS = {  # name -> (dtype, quant, codec)
    "fp16_none": ("float16", None, "none"), "fp16_lz4": ("float16", None, "lz4"), "fp16_zstd": ("float16", None, "zstd"),
    "bf16_none": ("bfloat16", None, "none"),
    "int8_token": ("int8", "token", "none"), "int8_channel": ("int8", "channel", "none"),
    "int8_token-channel": ("int8", "token-channel", "none"), "int8_token-channel-offset": ("int8", "token-channel-offset", "none"),
    "int8_default_lz4": ("int8", None, "lz4"), "int8_default_zstd": ("int8", None, "zstd"),
    "fp16_none_1thread": ("float16", None, "none"),  # the baseline of the encode pool: one encode thread per writer
}
ONE_THREAD = "fp16_none_1thread"


def heavy_tailed(n: int, grid: int, width: int, profile: dict[str, Any], seed: int):
    """(n, grid, grid, width) float32 features with the profile's outliers, offsets and high-norm tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, profile["sigma"], width).astype(np.float32)
    x = rng.standard_normal((n, grid, grid, width), dtype=np.float32) * scale
    (n_out, out_gain), (n_off, off_gain), (n_hn, hn_gain) = profile["outliers"], profile["offsets"], profile["high_norm"]
    chans = rng.choice(width, n_out + n_off, replace=False)
    for ch in chans[:n_out]:
        x[..., ch] *= rng.uniform(*out_gain)
    tokens = x.reshape(n, grid * grid, width)
    for i in range(n):  # high-norm tokens: the whole token (not the offsets below) grows
        tokens[i, rng.choice(grid * grid, min(n_hn, grid * grid), replace=False)] *= hn_gain
    for ch in chans[n_out:]:
        x[..., ch] += rng.uniform(*off_gain) * float(scale.mean()) * rng.choice([-1.0, 1.0])
    return x


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("storage", args)

    import time

    import numpy as np
    import torch

    from sak.pipeline.store.encode_pool import DEFAULT_ENCODE_THREADS
    from sak.pipeline.store.feature_store import FeatureStore
    from sak.pipeline.store.quant import DEFAULT_QUANT, stored_parts, token_cosines
    from sak.pipeline.store.spec import FeatureSpec
    from sak.pipeline.store.writer import SampleKey

    n, g, c = cfg["samples"], cfg["grid"], cfg["width"]
    layers = tuple(LAYERS)
    t0 = time.perf_counter()
    ref = {i: heavy_tailed(n, g, c, LAYERS[i], seed=i) for i in layers}
    raw = g * g * c * 2  # fp16 bytes per sample per layer
    bench.detail("setup", {**cfg, "layers": {i: LAYERS[i] for i in layers}, "raw_fp16_bytes_per_sample_layer": raw,
                           "synth_s": round(time.perf_counter() - t0, 2), "default_quant": DEFAULT_QUANT})
    keys = [SampleKey(f"{k:064x}", str(k), "synthetic") for k in range(n)]
    measured: dict[str, dict[str, Any]] = {}

    with Scratch(args.workdir, keep=args.keep) as scratch:
        def run(name: str):
            dtype, quant, codec = VARIANTS[name]
            quant = (quant or DEFAULT_QUANT) if dtype == "int8" else None
            spec = FeatureSpec(teacher="synthetic:heavy-tailed", weights="random-init:0", layers=layers, resolution=(g * 16, g * 16),
                               resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3, patch_size=16, width=c, grid=(g, g),
                               dtype=dtype, quant=quant, codec=codec)

            def once() -> dict[str, float]:
                store = FeatureStore.create(scratch.new(name), spec)
                t = time.perf_counter()
                writer = store.writer(n, encode_threads=1 if name == ONE_THREAD else None)
                for i in range(0, n, 4):
                    writer.append(keys[i : i + 4], [ref[j][i : i + 4] for j in layers])
                seg = writer.commit().segment_id
                enc = time.perf_counter() - t
                t = time.perf_counter()
                got = FeatureStore.open(store.path).read_rows(seg, list(range(n)))
                dec = time.perf_counter() - t
                seg_dir = store.path / "segments" / seg
                disk = {j: sum(dir_bytes(seg_dir / part) for part, _, _ in stored_parts(spec, j)) / n for j in layers}
                measured[name] = {"disk": disk, "got": got}
                return {"encode_s": enc, "decode_s": dec}
            return once

        times = alternate({name: run(name) for name in VARIANTS}, rounds=cfg["rounds"], warmup=1)

    mb = n * len(layers) * raw / 1e6
    results: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        got = measured[name]["got"]
        per_layer = {}
        for j in layers:
            a, b = torch.from_numpy(ref[j]), torch.from_numpy(np.asarray(got[j], dtype=np.float32))
            rc, sc = token_cosines(a, b), token_cosines(a, b, standardize=True)
            per_layer[j] = {"disk_vs_fp16": measured[name]["disk"][j] / raw, "raw_mean": rc.mean().item(), "raw_min": rc.min().item(),
                            "std_mean": sc.mean().item(), "std_min": sc.min().item()}
        results[name] = {
            "layers": per_layer,
            "disk_vs_fp16": float(np.mean([v["disk_vs_fp16"] for v in per_layer.values()])),
            "worst_std_mean": min(v["std_mean"] for v in per_layer.values()),
            "encode_mb_s": mb / median(r["encode_s"] for r in times[name]),
            "decode_mb_s": mb / median(r["decode_s"] for r in times[name]),
        }
        say(f"#   {name:26s} disk/fp16 {results[name]['disk_vs_fp16']:.4f}  encode {results[name]['encode_mb_s']:7.0f} MB/s  "
            f"decode {results[name]['decode_mb_s']:7.0f} MB/s")
        for j, v in per_layer.items():
            say(f"#     layer {j}: disk/fp16 {v['disk_vs_fp16']:.4f}  raw cos mean {v['raw_mean']:.7f} min {v['raw_min']:.6f}  "
                f"std cos mean {v['std_mean']:.7f} min {v['std_min']:.6f}")
    bench.detail("results", {k: {**v, "layers": {j: {m: round(x, 7) for m, x in d.items()} for j, d in v["layers"].items()}}
                             for k, v in results.items()})

    grid_part = {"grid": f"{g}x{g}", "width": c, "samples": n, "raw_fp16_bytes": raw}
    for name, r in results.items():
        if name == ONE_THREAD:
            continue
        int8 = VARIANTS[name][0] == "int8"
        parts = {**grid_part, "encode_mb_s": r["encode_mb_s"], "decode_mb_s": r["decode_mb_s"],
                 "std_cos_by_layer": "/".join(f"{v['std_mean']:.6f}" for v in r["layers"].values())}
        bench.ratio(f"storage_{name}_vs_raw_fp16", r["disk_vs_fp16"], 0.5 if int8 else (1.0 if name != "fp16_zstd" else 0.95),
                    parts, op="<=")
        bench.ratio(f"fidelity_{name}_worst_layer_std_cosine", r["worst_std_mean"], 0.9999, parts)
    default, base = results["int8_token-channel-offset"], results["fp16_none"]
    speed = {**grid_part, "int8_encode_mb_s": default["encode_mb_s"], "fp16_encode_mb_s": base["encode_mb_s"],
             "int8_decode_mb_s": default["decode_mb_s"], "fp16_decode_mb_s": base["decode_mb_s"]}
    bench.ratio("encode_int8_vs_fp16", default["encode_mb_s"] / base["encode_mb_s"], 0.5, speed)
    bench.ratio("decode_int8_vs_fp16", default["decode_mb_s"] / base["decode_mb_s"], 0.5, speed)
    pool, one = results["fp16_none"]["encode_mb_s"], results[ONE_THREAD]["encode_mb_s"]
    bench.ratio("encode_pool_vs_one_thread", pool / one, 1.0,
                {**grid_part, "pool_mb_s": pool, "one_thread_mb_s": one, "encode_threads": DEFAULT_ENCODE_THREADS})
    say("#   MB/s are of raw fp16 bytes (h*w*C*2 per sample and layer), so variants compare at equal content; "
        "int8 variants quantize on the host here (extraction quantizes on the teacher's device)")
    return bench.finish()


if __name__ == "__main__":
    main()
