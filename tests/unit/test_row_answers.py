"""Every row gets its own answer (all-bad slices, every output option) and only
allow-listed image formats are decoded (never EPS/PS through Ghostscript)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hybrid_infer.decode import ALLOWED_FORMATS, DecodeError, ImageDecoder, Preprocess, open_rgb
from hybrid_infer.output import result_batch

CLASSES = tuple(f"class-{i}" for i in range(10))

#: Every output option: (top_k, class_names, embedding layer or None).
OUTPUT_OPTIONS = {
    "plain": (0, None, None),
    "top_k": (5, None, None),
    "top_k+labels": (5, CLASSES, None),
    "embeddings": (0, None, "avgpool"),
    "embeddings+top_k": (3, None, "avgpool"),
}


def test_issue_reproducer_returns_per_row_errors():
    batch = result_batch(np.zeros((3, 0)), ["x"] * 3, top_k=5)
    assert batch.to_pylist() == [{"prediction": None, "error": "x", "top_k": None}] * 3


@pytest.mark.parametrize("logits", [np.zeros((3, 0)), np.zeros((0, 10)), np.zeros((0, 0)),
                                    np.zeros((3, 10))], ids=["n x 0", "0 x C", "0 x 0", "n x C"])
@pytest.mark.parametrize("option", sorted(OUTPUT_OPTIONS))
def test_result_batch_all_rows_failed(logits, option):
    top_k, names, _ = OUTPUT_OPTIONS[option]
    errors = ["not an image (unrecognised format)", "null value", "empty value (0 bytes)"]
    rows = result_batch(logits, errors, top_k=top_k, class_names=names).to_pylist()
    assert [row["error"] for row in rows] == errors
    assert all(row["prediction"] is None for row in rows)
    assert all(row.get("top_k") is None for row in rows)
    assert all(("top_k" in row) == bool(top_k) for row in rows)


def _tiny_jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_module():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()


@pytest.mark.parametrize("slice_kind", ["all bad", "mixed"])
@pytest.mark.parametrize("option", sorted(OUTPUT_OPTIONS))
def test_actor_pipeline_slice_of_bad_rows(tiny_module, option, slice_kind):
    """What an actor returns for one slice, through its real pipeline and runner."""
    from hybrid_infer.actor.pipeline import InferencePipeline
    from hybrid_infer.actor.runner import ModelRunner

    top_k, names, layer = OUTPUT_OPTIONS[option]
    layer = "1" if layer else None  # the AdaptiveAvgPool2d: a 4-wide embedding
    runner = ModelRunner(tiny_module, device="cpu", example_shape=(2, 3, 32, 32),
                         embedding_layer=layer)
    pipeline = InferencePipeline(runner, batch_size=2, decode_threads=1)
    bad = [None, b"", b"junk bytes", b"%!PS-Adobe-3.0 EPSF-3.0\n"]
    values = bad + ([_tiny_jpeg(1), _tiny_jpeg(2)] if slice_kind == "mixed" else [])
    decoder = ImageDecoder(Preprocess(resize=32, crop=32))
    outputs, errors = pipeline.run(values, decoder, timeout=60)
    rows = result_batch(outputs if outputs is not None else np.zeros((len(values), 0)),
                        errors, top_k, names).to_pylist()
    assert len(rows) == len(values)
    for row in rows[:len(bad)]:
        assert row["error"] and row["prediction"] is None and row.get("top_k") is None
    for row in rows[len(bad):]:
        assert row["error"] is None
        assert len(row["prediction"]) == (4 if layer else 10)
        if top_k:
            assert len(row["top_k"]["indices"]) == min(top_k, 4 if layer else 10)
            assert ("labels" in row["top_k"]) == (names is not None)


# -- decode only allow-listed formats -----------------------------------------------------

def _eps_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "EPS")  # PIL writes EPS itself
    return buffer.getvalue()


PS_BYTES = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.fixture
def no_ghostscript(monkeypatch):
    """Fail the test if PIL ever reaches for Ghostscript."""
    from PIL import EpsImagePlugin

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("Ghostscript was invoked on untrusted bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    return calls


@pytest.mark.parametrize("name", ["eps", "ps", "dos-eps"])
def test_eps_and_ps_get_an_error_without_ghostscript(no_ghostscript, name):
    import struct

    eps = _eps_bytes()
    data = {"eps": eps, "ps": PS_BYTES,
            # DOS EPS binary header: magic, PostScript offset and length, no previews
            "dos-eps": b"\xc5\xd0\xd3\xc6" + struct.pack("<II", 30, len(eps)) + bytes(18) + eps,
            }[name]
    with pytest.raises(DecodeError, match="unsupported image format") as raised:
        open_rgb(data)
    assert "EPS" in str(raised.value)
    assert not no_ghostscript


def test_allowed_formats_still_decode():
    from PIL import Image

    image = Image.new("RGB", (20, 12), (10, 200, 30))
    for fmt in ALLOWED_FORMATS:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        assert open_rgb(buffer.getvalue()).size == (20, 12), fmt
    buffer = io.BytesIO()
    image.save(buffer, "MPO", save_all=True, append_images=[image])  # a phone's MPO
    assert open_rgb(buffer.getvalue()).size == (20, 12)


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PPM", "PCX", "SGI"])
def test_other_pil_formats_are_refused(fmt):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, fmt)
    with pytest.raises(DecodeError, match="not an image"):
        open_rgb(buffer.getvalue())
