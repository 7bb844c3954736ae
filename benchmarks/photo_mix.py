"""Image sets for benchmarks/gpu_actor.py: a realistic mix beside the small generated
JPEGs, and a description of any set (what a reader needs to judge a decode figure).

The generated set (hybrid_infer.demo_data) is a best case for decode: small (200-700 px)
baseline 4:2:0 JPEGs. The mix adds what real photo collections hold: camera-size photos
(12 megapixels at full size) in 4:2:0 and 4:4:4, HD frames, greyscale and progressive
JPEGs, and a few corrupt files (truncated, garbage after a JPEG signature), which must
fail with a reason on every path.
"""

from __future__ import annotations

import io

import numpy as np

#: (kind, share of the mix); camera photos are width x height at full size.
MIX = (("camera 4:2:0", 0.20), ("camera 4:4:4", 0.10), ("hd 4:2:0", 0.30),
       ("greyscale", 0.15), ("progressive", 0.20), ("corrupt", 0.05))
CAMERA_FULL = (4000, 3000)


def _photo(rng, width: int, height: int):
    """A photo-like image: smooth large-scale structure plus fine sensor-like noise."""
    from PIL import Image

    coarse = rng.uniform(0, 255, size=(max(2, height // 64), max(2, width // 64), 3))
    image = Image.fromarray(coarse.astype(np.uint8), "RGB").resize((width, height),
                                                                   Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    pixels += rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _encode(image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def _blob(kind: str, rng, scale: float) -> bytes:
    camera = (int(CAMERA_FULL[0] * scale), int(CAMERA_FULL[1] * scale))
    if kind == "camera 4:2:0":
        return _encode(_photo(rng, *camera), quality=90, subsampling=2)
    if kind == "camera 4:4:4":
        return _encode(_photo(rng, *camera), quality=95, subsampling=0)
    if kind == "hd 4:2:0":
        return _encode(_photo(rng, 1920, 1080), quality=85, subsampling=2)
    if kind == "greyscale":
        return _encode(_photo(rng, 1024, 768).convert("L"), quality=85)
    if kind == "progressive":
        return _encode(_photo(rng, 1280, 960), quality=85, progressive=True)
    if kind == "corrupt":
        whole = _encode(_photo(rng, 640, 480), quality=85)
        return (whole[:len(whole) // 3] if rng.random() < 0.5  # truncated
                else whole[:2] + bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    raise ValueError(kind)


def photo_mix(count: int, distinct_per_kind: int, *, scale: float = 1.0,
              seed: int = 7) -> tuple[list[bytes], list[str]]:
    """`count` rows in the MIX's shares (blobs, their kinds), from `distinct_per_kind`
    distinct files per kind, interleaved; camera photos at `scale` of full size."""
    rng = np.random.default_rng(seed)
    distinct = {kind: [_blob(kind, rng, scale) for _ in range(distinct_per_kind)]
                for kind, _ in MIX}
    kinds = [kind for kind, share in MIX for _ in range(max(1, round(share * count)))]
    kinds = [kinds[i] for i in np.random.default_rng(seed).permutation(len(kinds))][:count]
    while len(kinds) < count:
        kinds.append(MIX[len(kinds) % len(MIX)][0])
    seen: dict[str, int] = {}
    blobs = []
    for kind in kinds:  # each kind's distinct files in turn
        seen[kind] = seen.get(kind, -1) + 1
        blobs.append(distinct[kind][seen[kind] % distinct_per_kind])
    return blobs, kinds


def describe(blobs: list[bytes]) -> dict:
    """What a set of image files is: rows, distinct files, mean size, megapixels, and
    counts by JPEG kind (baseline/progressive, chroma subsampling, greyscale, corrupt)."""
    from PIL import Image, JpegImagePlugin

    unique = {id(blob): blob for blob in blobs}
    kinds: dict[str, int] = {}
    megapixels = []
    for blob in unique.values():
        try:
            image = Image.open(io.BytesIO(blob))
            image.load()
        except Exception:
            kind = "corrupt"
        else:
            megapixels.append(image.width * image.height / 1e6)
            sampling = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(
                JpegImagePlugin.get_sampling(image), "") if image.format == "JPEG" else ""
            kind = " ".join(filter(None, [
                image.format, "progressive" if image.info.get("progressive") else "baseline",
                "greyscale" if image.mode == "L" else sampling]))
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"rows": len(blobs), "distinct": len(unique),
            "mean_kb": round(sum(map(len, blobs)) / max(1, len(blobs)) / 1024, 1),
            "megapixels": ({"min": round(min(megapixels), 2),
                            "median": round(float(np.median(megapixels)), 2),
                            "max": round(max(megapixels), 2)} if megapixels else None),
            "distinct_files_by_kind": dict(sorted(kinds.items()))}


def summary(description: dict) -> str:
    """One line for the report."""
    mp = description["megapixels"] or {}
    kinds = ", ".join(f"{k}: {v}" for k, v in description["distinct_files_by_kind"].items())
    return (f"{description['rows']} rows from {description['distinct']} distinct files, "
            f"{description['mean_kb']} KB mean, {mp.get('min')}-{mp.get('max')} MP "
            f"(median {mp.get('median')}); distinct files by kind: {kinds}")
