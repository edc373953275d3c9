"""Storage: bytes per sample per layer on disk vs raw float16, and the cosine fidelity to float32 targets.

One teacher forward in float32 gives the reference maps. They are written into one store per
stored dtype the feature spec offers (float16, bfloat16, float32; zstd level 3, one chunk per
sample, shards) through the store's own ``SegmentWriter`` (what ``sak-cache extract`` uses:
the same round-to-nearest-even conversion), read back with ``read_rows``, and compared:

* size: bytes of ``segments/*/layer_<i>`` on disk / rows / layers, over the raw float16 size
  h * w * C * 2;
* fidelity: cosine distance (1 - cosine) between each stored map and its float32 reference over
  the flattened map (the distillation loss's main term), mean over samples and layers; the parts
  also give the worst per-token cosine.

The store offers no lossy option below 16 bits. To inform that choice, an int8 option with
one float16 scale per token (absmax over channels) is ESTIMATED here (per-sample zstd frames
like the store's chunks) and marked ``estimate``. Random-init teachers stand in for trained
ones (no weights can be downloaded here): trained ViTs have outlier channels and high-norm
tokens, which make int8 per-token scaling lose more than it does on these.
"""

from __future__ import annotations

import time

from .common import Bench, Scratch, dir_bytes, image_folder, indexed, parser, pick, say, setup, sync

SIZES = {
    "quick": dict(teacher="test:tiny", resolution=64, images=8, image_size=(64, 80), batch_size=4),
    "cpu": dict(teacher="timm:vit_base_patch14_dinov2", resolution=224, images=16, image_size=(480, 640), batch_size=8),
    "cuda": dict(teacher="timm:vit_base_patch14_dinov2", resolution=448, images=64, image_size=(480, 640), batch_size=16),
}
DATASET = "photos"
DTYPES = ("float16", "bfloat16", "float32")


def cosines(ref, got):
    """(mean cosine over flattened maps, min cosine over tokens) of (n, h, w, c) arrays."""
    import numpy as np

    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = got.reshape(got.shape[0], -1).astype(np.float64)
    flat = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ta = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    tb = got.reshape(-1, got.shape[-1]).astype(np.float64)
    tok = (ta * tb).sum(1) / np.maximum(np.linalg.norm(ta, axis=1) * np.linalg.norm(tb, axis=1), 1e-30)
    return float(flat.mean()), float(tok.min())


def int8_per_token(x):
    """Quantize (n, h, w, c) float32 to int8 with one float16 absmax scale per token; returns (q, scale, dequantized)."""
    import numpy as np

    scale = (np.abs(x).max(axis=-1, keepdims=True) / 127.0).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
    return q, scale, q.astype(np.float32) * safe


def zstd_bytes_per_sample(*arrays) -> float:
    """Mean compressed bytes per sample, one zstd (level 3) frame per sample and array, as the store chunks."""
    from numcodecs import Zstd

    codec = Zstd(level=3)
    n = arrays[0].shape[0]
    return sum(len(codec.encode(a[i].tobytes())) for a in arrays for i in range(n)) / n


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--images", type=int, default=None)
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("storage", args)

    import numpy as np
    import torch

    from sak.pipeline.data.datasets import open_dataset
    from sak.pipeline.data.images import decode_rgb
    from sak.pipeline.extract.job import ExtractConfig, spec_for
    from sak.pipeline.store.feature_store import FeatureStore
    from sak.pipeline.store.writer import SampleKey
    from sak.pipeline.teachers import create_teacher

    device, n = args.device, cfg["images"]
    root = image_folder(args.workdir, n, tuple(cfg["image_size"]))
    index = indexed(args.workdir, root, DATASET, fmt="folder")
    ds = open_dataset(index.parent.parent, DATASET)
    rows = list(ds.ok_rows())
    teacher = create_teacher(cfg["teacher"], random_init=True, seed=0, resolution=cfg["resolution"]).to(device)
    layers = tuple(teacher.default_layers)
    x_all = torch.stack([teacher.preprocess(decode_rgb(ds.image_path(r))) for r in rows])
    ref: list[list] = [[] for _ in layers]
    amp_maps: list[list] = [[] for _ in layers]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, cfg["batch_size"]):
            x = x_all[i : i + cfg["batch_size"]].to(device)
            maps, _ = teacher.forward_layers(x, layers)
            for j, m in enumerate(maps):
                ref[j].append(m.float().cpu().numpy())
            if device.startswith("cuda"):  # what extract computes on a GPU: the forward under float16 autocast
                with torch.autocast("cuda", dtype=torch.float16):
                    maps, _ = teacher.forward_layers(x, layers)
                for j, m in enumerate(maps):
                    amp_maps[j].append(m.to(torch.float16).cpu().numpy())
    sync(device)
    ref_np = [np.concatenate(r) for r in ref]
    h, w = teacher.grid
    raw = h * w * teacher.width * 2
    bench.detail("setup", {**cfg, "layers": layers, "grid": (h, w), "width": teacher.width,
                           "forward_s": time.perf_counter() - t0})

    keys = [SampleKey(r["sha256"], r["sample_id"], r["source"], 0, "{}") for r in rows]
    results = {}
    with Scratch(args.workdir, keep=args.keep) as scratch:
        cache = scratch.new("cache")
        for dtype in DTYPES:
            spec = spec_for(teacher, ExtractConfig(cache=str(cache), teachers=(cfg["teacher"],), dtype=dtype))
            store = FeatureStore.create(cache, spec)
            writer = store.writer(n)
            for i in range(0, n, cfg["batch_size"]):
                writer.append(keys[i : i + cfg["batch_size"]], [a[i : i + cfg["batch_size"]] for a in ref_np])
            seg = writer.commit().segment_id
            got = FeatureStore.open(store.path).read_rows(seg, list(range(n)))
            per_layer = [dir_bytes(store.path / "segments" / seg / f"layer_{i}") / n for i in layers]
            cos = [cosines(ref_np[j], got[i].astype(np.float32)) for j, i in enumerate(layers)]
            results[dtype] = {"bytes": float(np.mean(per_layer)), "per_layer": per_layer,
                              "cos_mean": float(np.mean([c[0] for c in cos])), "cos_token_min": min(c[1] for c in cos)}
    est_fp16 = float(np.mean([zstd_bytes_per_sample(a.astype(np.float16)) for a in ref_np]))
    q8 = [int8_per_token(a) for a in ref_np]
    est_int8 = float(np.mean([zstd_bytes_per_sample(q, s) for q, s, _ in q8]))
    cos8 = [cosines(a, d) for a, (_, _, d) in zip(ref_np, q8, strict=True)]
    results["int8_token_estimate"] = {"bytes": est_int8, "cos_mean": float(np.mean([c[0] for c in cos8])),
                                      "cos_token_min": min(c[1] for c in cos8)}
    if amp_maps[0]:
        cos_amp = [cosines(a, np.concatenate(m).astype(np.float32)) for a, m in zip(ref_np, amp_maps, strict=True)]
        results["float16_autocast_forward"] = {"bytes": results["float16"]["bytes"],
                                               "cos_mean": float(np.mean([c[0] for c in cos_amp])),
                                               "cos_token_min": min(c[1] for c in cos_amp)}
    bench.detail("results", {**results, "float16_zstd_estimate_bytes": est_fp16, "raw_fp16_bytes": raw})

    size_targets = {"float16": 1.0, "bfloat16": 1.0, "float32": 2.0, "int8_token_estimate": 0.6}
    # fidelity as cosine distance 1 - cos (the distillation loss's main term), lower is better
    dist_targets = {"float16": 1e-4, "bfloat16": 1e-3, "float32": 1e-6, "int8_token_estimate": 1e-3,
                    "float16_autocast_forward": 1e-3}
    for name, r in results.items():
        label = name.replace("float", "fp").replace("bfp", "bf")
        common = {"bytes_per_sample_layer": round(r["bytes"]), "raw_fp16_bytes": raw, "cosine_mean": f"{r['cos_mean']:.7f}",
                  "cosine_token_min": f"{r['cos_token_min']:.6f}", "grid": f"{h}x{w}", "width": teacher.width}
        if name in size_targets:
            bench.ratio(f"storage_{label}_zstd_vs_raw_fp16", r["bytes"] / raw, size_targets[name], common, op="<=")
        bench.ratio(f"fidelity_{label}_cosine_distance", 1.0 - r["cos_mean"], dist_targets[name], common, op="<=")
    say(f"#   teacher {cfg['teacher']} random-init at {cfg['resolution']} px; int8_token_estimate is NOT a store option "
        f"(estimated with per-sample zstd frames; the same estimate for float16 gives {est_fp16:.0f} B vs "
        f"{results['float16']['bytes']:.0f} B measured on disk)")
    return bench.finish()


if __name__ == "__main__":
    main()
