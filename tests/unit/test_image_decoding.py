"""Bad values are refused with their reason; odd but valid images decode to the RGB a
user expects; a decompression bomb is refused before it is decoded. Pure code (the same
values in a real job: tests/integration/test_bad_records.py)."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from hybrid_infer.decode import DecodeError, ImageDecoder, Preprocess, open_rgb

from faults import GIF_FRAME_COLOURS, TEST_MAX_PIXELS, gradient, make_samples, sixteen_bit_png

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


def test_pil_filters_are_torchvisions_for_every_interpolation():
    from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping

    from hybrid_infer.decode import pil_filter

    for mode, pil in pil_modes_mapping.items():
        assert pil_filter(mode.value) == pil, mode


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_actors_table_decoder_is_the_torchvision_transform_bit_for_bit(interpolation):
    """Its batch equals the stacked transform's: sizes above, at and below the resize (a
    crop larger than the image is padded), greyscale, palette, RGBA, 16-bit and CMYK;
    bad values are refused with the same reason."""
    import torch

    from hybrid_infer.decode import TableImageDecoder
    from faults import rgb_jpeg

    preprocess = Preprocess(interpolation=interpolation, max_pixels=TEST_MAX_PIXELS)
    reference, table = ImageDecoder(preprocess), TableImageDecoder(preprocess)
    values = [value for value, reason in SAMPLES.values() if reason is None] + [
        rgb_jpeg(width, height, seed=width) for width, height in
        ((640, 480), (300, 700), (224, 224), (225, 223), (100, 60), (30, 500))]
    want = torch.stack([reference(value) for value in values])
    got = table.collate([table(value) for value in values])
    assert got.shape == want.shape and torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)
    for key in BAD:
        with pytest.raises(DecodeError) as caught:
            table(SAMPLES[key][0])
        assert str(caught.value).startswith(BAD[key])


def test_the_normalize_table_lays_out_channels_last_or_contiguous():
    import torch

    from hybrid_infer.decode import NormalizeTable

    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    table = NormalizeTable((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    want = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    want = want.sub(torch.tensor([0.4, 0.5, 0.6])[:, None, None]).div(
        torch.tensor([0.2, 0.25, 0.3])[:, None, None])
    interleaved, planar = table(pixels), table(pixels, channels_last=False)
    assert torch.equal(interleaved, want) and torch.equal(planar, want)
    assert interleaved.is_contiguous(memory_format=torch.channels_last)
    assert planar.is_contiguous()
