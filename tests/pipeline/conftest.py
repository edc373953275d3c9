"""Store/extraction test helpers: a small FeatureSpec and a one-call segment writer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.spec import FeatureSpec
from sak.pipeline.store.writer import SampleKey, WriteReport


def make_spec(**overrides) -> FeatureSpec:
    """A test:tiny-shaped spec (grid 8x8, width 32, 1 prefix token, layers 1 and 3)."""
    base = dict(
        teacher="test:tiny", weights="random-init:0", layers=(1, 3), resolution=(64, 64), resize="squash",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=8, width=32, grid=(8, 8), num_prefix_tokens=1,
    )
    base.update(overrides)
    return FeatureSpec(**base)


def random_features(spec: FeatureSpec, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Float32 (n, h, w, c) per layer and (n, p, c) prefix per layer."""
    rng = np.random.default_rng(seed)
    h, w = spec.grid
    layers = [rng.standard_normal((n, h, w, spec.width)).astype(np.float32) * (1 + i) for i in range(len(spec.layers))]
    prefix = [rng.standard_normal((n, spec.num_prefix_tokens, spec.width)).astype(np.float32) for _ in spec.layers]
    return layers, prefix


def write_segment(
    store: FeatureStore, shas: list[str], *, seed: int = 0, batch: int = 3, failed: dict[str, str] | None = None, capacity=None
) -> tuple[WriteReport, list[np.ndarray], list[np.ndarray]]:
    """Write one committed segment with random features for ``shas`` (+ failed rows); returns the float32 inputs."""
    layers, prefix = random_features(store.spec, len(shas), seed)
    writer = store.writer(capacity or max(1, len(shas)))
    for i in range(0, len(shas), batch):
        keys = [SampleKey(s, f"id-{s}", "src") for s in shas[i : i + batch]]
        writer.append(keys, [a[i : i + batch] for a in layers], [p[i : i + batch] for p in prefix] if store.spec.keep_prefix else None)
    for sha, err in (failed or {}).items():
        writer.add_failed(SampleKey(sha, f"id-{sha}", "src"), err)
    return writer.commit(), layers, prefix


@pytest.fixture()
def st():
    """The helpers above as one namespace (test modules cannot import conftest)."""
    return SimpleNamespace(make_spec=make_spec, random_features=random_features, write_segment=write_segment)


@pytest.fixture(scope="session")
def s3_bucket():
    """A real S3 API on loopback: moto's server in a thread, one bucket, fake credentials.

    Returns ``s3://<bucket>``; s3fs reaches it through ``AWS_ENDPOINT_URL`` and fsspec's s3
    config (``client_kwargs.endpoint_url``). Skipped only when moto[server]/s3fs are missing.
    """
    import socket

    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - the test extra installs both
        pytest.skip(f"loopback S3 tests need moto[server] and s3fs (pip install -e '.[test]'): {exc}")
    import fsspec.config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        mp.setenv(key, value)
    mp.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("sak-lab")
    try:
        yield "s3://sak-lab"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        mp.undo()
        server.stop()
