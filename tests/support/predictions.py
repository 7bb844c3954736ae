"""The shared test model and what a user running PyTorch directly gets from it."""

from __future__ import annotations

import numpy as np

from hybrid_infer.models import ModelSpec

# Small, fast settings shared by the tests so that they reuse one warm pool.
TEST_MODEL = "resnet18"
TEST_BATCH = 8
N_IMAGES = 24


def reference_logits(spec: ModelSpec, paths: list[str]) -> dict[str, np.ndarray]:
    """What a user running PyTorch directly gets for each file."""
    import torch

    from hybrid_infer.decode import ImageDecoder

    module = spec.load_module()
    decoder = ImageDecoder()
    with torch.no_grad():
        batch = torch.stack([decoder(open(p, "rb").read()) for p in paths])
        logits = module(batch).numpy()
    return dict(zip(paths, logits))


def local_path(uri: str) -> str:
    return uri[len("file:"):] if uri.startswith("file:") else uri


def assert_matches(rows, expected: dict, atol: float = 1e-4) -> None:
    """Every expected file exactly once, each with logits equal to the direct run."""
    paths = [local_path(row["path"]) for row in rows]
    assert sorted(paths) == sorted(expected), "rows lost or duplicated"
    for row in rows:
        assert row["error"] is None, row["error"]
        got = np.asarray(row["prediction"], dtype=np.float32)
        np.testing.assert_allclose(got, expected[local_path(row["path"])], atol=atol, rtol=0)
