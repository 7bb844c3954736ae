"""Issue 4, item 1: bad records become per-row errors; odd but valid images decode right."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections import Counter

import numpy as np
import pytest

from hybrid_infer import infer
from hybrid_infer.decode import DecodeError, ImageDecoder, Preprocess, open_rgb
from hybrid_infer.errors import from_spark
from hybrid_infer.job import _reason_kind
from hybrid_infer.models import ModelSpec

from runtime_env import RAY_ENV
from faults import (GIF_FRAME_COLOURS, SMALL_BATCH, SMALL_MODEL, TEST_MAX_PIXELS,
                    assert_rows_exactly, gradient, images_frame, make_samples,
                    reference_rows, sixteen_bit_png, small_jpegs, small_preprocess,
                    small_settings)

SAMPLES = make_samples()
BAD = {key: reason for key, (_, reason) in SAMPLES.items() if reason is not None}


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_value_raises_its_reason(key):
    decoder = ImageDecoder(Preprocess(max_pixels=TEST_MAX_PIXELS))
    with pytest.raises(DecodeError) as caught:
        decoder(SAMPLES[key][0])
    assert str(caught.value).startswith(BAD[key]), str(caught.value)
    assert len(str(caught.value)) < 200


def _pixels(key: str) -> np.ndarray:
    image = open_rgb(SAMPLES[key][0])
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int32)


def test_odd_valid_images_decode_to_the_rgb_a_user_expects():
    from PIL import Image

    rgb = gradient(64, 48, seed=3).astype(np.int32)
    # 16-bit greyscale: 0..65535 scaled to 0..255 (not clipped at 255), in all 3 channels
    assert np.array_equal(_pixels("sixteen_bit_png"), sixteen_bit_png()[1])
    # animated GIF: the first frame
    assert (_pixels("animated_gif") == GIF_FRAME_COLOURS[0]).all()
    # RGBA: alpha dropped, colour kept exactly (PNG is lossless)
    assert np.array_equal(_pixels("rgba_png"), rgb)
    # palette PNG: each index looked up in the palette
    palette = Image.fromarray(rgb.astype(np.uint8), "RGB").convert(
        "P", palette=Image.ADAPTIVE, colors=16)
    lookup = np.asarray(palette.getpalette(), np.int32).reshape(-1, 3)
    assert np.array_equal(_pixels("palette_png"), lookup[np.asarray(palette)])
    # greyscale JPEG: the grey value in all three channels (JPEG error only)
    grey = _pixels("grayscale_jpeg")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.abs(grey[..., 0] - rgb[..., 0]).mean() < 3
    # CMYK JPEG: back to about the RGB it was made from
    assert np.abs(_pixels("cmyk_jpeg") - rgb).mean() < 6
    # an extremely wide image is resized on its short side and centre-cropped
    assert ImageDecoder(Preprocess(max_pixels=TEST_MAX_PIXELS))(
        SAMPLES["very_wide_png"][0]).shape == (3, 224, 224)


def test_sixteen_bit_png_tensor_equals_hand_computed_transform():
    import torch

    png, expected_rgb = sixteen_bit_png()
    got = ImageDecoder(Preprocess(resize=48, crop=48))(png)
    # 64x48 image, resize 48 on the short side is a no-op, centre crop 48 of width 64: cols 8..56
    crop = expected_rgb[:, 8:56].astype(np.float32) / 255.0
    mean = np.asarray(Preprocess().mean, np.float32)
    std = np.asarray(Preprocess().std, np.float32)
    want = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _zero_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of zeros, streamed so that it never exists in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 10000x10000 = 100 M pixels (100 MB decoded) in about 100 KB of PNG.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_zero_png(10_000, 10_000))
    assert bomb.stat().st_size < 1_000_000
    script = textwrap.dedent("""
        import resource, sys
        from hybrid_infer.decode import DecodeError, ImageDecoder
        data = open(sys.argv[1], "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            ImageDecoder()(data)
        except DecodeError as exc:
            print(exc)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True,
                            text=True, timeout=120)
    reason, grown_mb = result.stdout.strip().splitlines()
    assert reason.startswith("image too large: 10000x10000"), result.stdout + result.stderr
    assert int(grown_mb) < 50, f"peak memory grew {grown_mb} MB: the bomb was decoded"


def _job_values() -> dict:
    values = {key: value for key, (value, _) in SAMPLES.items()}
    values.update(small_jpegs(12, seed=1))
    return values


@pytest.mark.parametrize("mode", ["hybrid", "udf"])
def test_bad_records_become_row_errors_and_the_job_completes(spark, ray_address, small_pool,
                                                            mode):
    values = _job_values()
    preprocess = small_preprocess()
    expected = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, preprocess)
    # the reference agrees with what each sample is meant to be
    assert {k for k, v in expected.items() if isinstance(v, str)} == set(BAD)
    rows = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                 mode=mode, pool=small_settings(),
                 preprocess=preprocess, ray_address=ray_address, rows_per_batch=3).collect()
    report = assert_rows_exactly(rows, expected)
    assert report["errors"] == len(BAD)


def test_fail_fast_raises_on_the_first_bad_row(spark, ray_address, small_pool):
    values = dict(small_jpegs(6, seed=2))
    values["broken"] = SAMPLES["truncated_jpeg"][0]
    result = infer(images_frame(spark, values), SMALL_MODEL, weights="random",
                   pool=small_settings(),
                   preprocess=small_preprocess(), ray_address=ray_address, fail_fast=True)
    with pytest.raises(Exception) as caught:
        result.collect()
    error = from_spark(caught.value)
    assert error is not None, str(caught.value)[:2000]
    assert "row id=broken: truncated or corrupt image data (JPEG)" in str(error), str(error)


@pytest.mark.slow
def test_cli_reports_failures_by_reason_and_fails_fast(tmp_path, ray_address, small_pool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = _job_values()
    table = pa.table({"id": list(values), "content": pa.array(list(values.values()),
                                                              pa.binary())})
    source = tmp_path / "input.parquet"
    pq.write_table(table, source)
    env = {**os.environ, **RAY_ENV}
    cli = [sys.executable, "-m", "hybrid_infer.cli", "run", "--input", str(source),
           "--ray-address", ray_address, "--model", SMALL_MODEL, "--weights", "random",
           "--batch-size",
           str(SMALL_BATCH), "--num-actors", "2", "--max-pixels", str(TEST_MAX_PIXELS),
           "--no-progress", "--spark-master", "local[1]"]
    done = subprocess.run(cli + ["--output", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 3, done.stderr[-3000:]   # 3: the job ran, some rows failed
    expected_reasons = reference_rows(ModelSpec(SMALL_MODEL, weights="random"), values, Preprocess(
        max_pixels=TEST_MAX_PIXELS))
    kinds = Counter(_reason_kind(r) for r in expected_reasons.values() if isinstance(r, str))
    assert sum(kinds.values()) == len(BAD)
    assert (f"rows {len(values)}, succeeded {len(values) - len(BAD)}, failed {len(BAD)}"
            in done.stdout), done.stdout
    for kind, count in kinds.items():
        assert f"{count} rows failed: {kind}\n" in done.stdout + "\n", (kind, done.stdout)
    written = pq.read_table(tmp_path / "out").to_pydict()
    assert sorted(written["id"]) == sorted(values)

    stopped = subprocess.run(cli + ["--output", str(tmp_path / "out2"), "--fail-fast"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert stopped.returncode == 1, stopped.stderr[-3000:]   # 1: a runtime error
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("hybrid-infer: error: bad record (fail_fast): row id="), last
    assert any(reason in last for reason in BAD.values()), last
