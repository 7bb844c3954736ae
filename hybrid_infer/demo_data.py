"""Deterministic demo images: N JPEGs of varied sizes, shapes and colours."""

from __future__ import annotations

import os

import numpy as np


def generate_jpegs(directory: str, count: int, *, seed: int = 0, min_side: int = 200,
                   max_side: int = 700) -> list[str]:
    """Write `count` JPEGs (gradients, shapes and noise; same bytes for the same seed)."""
    from PIL import Image, ImageDraw

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-0.6, 0.6, size=(3, 2))
        pixels = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], -1)
        pixels += rng.normal(0, 12, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 7))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x1 + 1, y1 + 1], fill=colour)
        path = os.path.join(directory, f"img_{index:06d}.jpg")
        image.save(path, format="JPEG", quality=int(rng.integers(70, 96)))
        paths.append(path)
    return paths
