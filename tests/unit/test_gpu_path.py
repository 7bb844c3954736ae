"""The device data path (actor/device_pipeline.py, device_decode.py) on CPU tensors, as CI can run it: torchvision's
CPU JPEG decoder stands in for nvJPEG; everything else is the code a GPU actor runs."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from hybrid_infer.actor.cpu_decode import CpuDecodePool
from hybrid_infer.actor.device_decode import normalize, resize_crop_into
from hybrid_infer.actor.device_pipeline import binary_buffers
from hybrid_infer.actor.inference import InferenceActor
from hybrid_infer.transport.protocol import RequestOptions
from hybrid_infer.decode import (ImageDecoder, Preprocess, decode_uint8, device_decodable,
                                 jpeg_header)
from hybrid_infer.demo_data import generate_jpegs
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.settings import ActorSettings, PoolSettings
from hybrid_infer.weights import state_dict_to_arrays

from paths import REPO as ROOT


def _jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def _photo(seed: int = 0, size=(320, 240), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([(x * (c + 1) + y * (3 - c)) % 256 for c in range(3)], -1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _view(data: bytes):
    return memoryview(np.frombuffer(data, dtype=np.uint8)), 0, len(data)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    paths = generate_jpegs(str(tmp_path_factory.mktemp("jpegs")), 24, seed=3)
    return [open(path, "rb").read() for path in paths]


@pytest.fixture(scope="module")
def model():
    spec = ModelSpec("resnet18", weights="random", seed=0)
    return spec, state_dict_to_arrays(spec.load_state_dict())


@pytest.fixture(scope="module")
def actors(model):
    spec, arrays = model
    return {decode: InferenceActor(spec, arrays, ActorSettings(decode=decode, torch_threads=1),
                                   "test", 0) for decode in ("cpu", "gpu")}


def _infer(actor, values: list):
    batch = pa.RecordBatch.from_arrays([pa.array(values, pa.binary())], ["content"])
    out = actor.infer(batch, RequestOptions())
    return out.column("prediction").to_pylist(), out.column("error").to_pylist()


# --- headers and routing -------------------------------------------------------------

def test_jpeg_headers_tell_what_the_device_decoder_may_take(jpegs):
    rgb = _photo()
    baseline = _jpeg(rgb)
    assert jpeg_header(*_view(baseline))[:4] == (320, 240, 3, 0xC0)
    assert device_decodable(*_view(baseline), Preprocess())
    progressive = _jpeg(rgb, progressive=True)
    assert jpeg_header(*_view(progressive))[3] == 0xC2
    assert not device_decodable(*_view(progressive), Preprocess())
    cmyk = _jpeg(rgb.convert("CMYK"))
    assert jpeg_header(*_view(cmyk))[2] == 4
    assert not device_decodable(*_view(cmyk), Preprocess())
    grey = _jpeg(rgb.convert("L"))
    assert jpeg_header(*_view(grey))[2] == 1 and device_decodable(*_view(grey), Preprocess())
    truncated = baseline[:len(baseline) // 3]
    assert jpeg_header(*_view(truncated)) is not None  # the header survives the cut...
    assert not device_decodable(*_view(truncated), Preprocess())  # ...its EOI does not
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    assert jpeg_header(*_view(png.getvalue())) is None
    # Pixel limits are read from the frame header, before any decoding.
    assert not device_decodable(*_view(baseline), Preprocess(max_pixels=320 * 240 - 1))
    strip = _jpeg(Image.new("RGB", (3000, 2)))
    assert not device_decodable(*_view(strip), Preprocess(max_pixels=1_000_000))
    assert all(device_decodable(*_view(data), Preprocess()) for data in jpegs)


def test_binary_buffers_view_rows_without_python_objects():
    column = pa.array([b"ab", None, b"", b"cde"], pa.binary()).slice(1)
    offsets, data, valid = binary_buffers(column)
    assert valid.tolist() == [False, True, True]
    assert data[offsets[2]:offsets[3]].tobytes() == b"cde"
    large = pa.array([b"xy", b"z"], pa.large_binary())
    offsets, data, _ = binary_buffers(large)
    assert data[offsets[1]:offsets[2]].tobytes() == b"z"


# --- the same pixels as the PIL path ---------------------------------------------------

@pytest.mark.parametrize("preprocess", [Preprocess(), Preprocess(resize=256, crop=224),
                                        Preprocess(resize=160, crop=224)])
def test_uint8_cpu_decode_equals_image_decoder(jpegs, preprocess):
    reference = ImageDecoder(preprocess)
    for data in jpegs[:8] + [_jpeg(_photo(mode="L")), _jpeg(_photo().convert("CMYK"))]:
        pixels = torch.from_numpy(decode_uint8(data, preprocess).copy()).permute(2, 0, 1)[None]
        assert torch.allclose(normalize(pixels, preprocess)[0], reference(data), atol=1e-5)


def test_tensor_resize_crop_matches_pil_closely(jpegs):
    from torchvision.io import decode_jpeg

    for preprocess in (Preprocess(), Preprocess(resize=160, crop=224)):
        out = torch.empty((3, preprocess.crop, preprocess.crop), dtype=torch.uint8)
        for data in jpegs[:8]:
            resize_crop_into(out, decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)),
                             preprocess)
            pil = torch.from_numpy(decode_uint8(data, preprocess).copy()).permute(2, 0, 1)
            difference = (out.int() - pil.int()).abs()
            # Different IDCT/upsampling (libjpeg-turbo vs PIL's libjpeg) and resize kernels:
            # a few levels at most, almost everywhere.
            assert difference.float().mean() < 2.0 and difference.max() <= 40


def _real_photos() -> list[bytes]:
    """scikit-image's sample photographs as JPEGs, at several scales and crops."""
    skimage_data = pytest.importorskip("skimage.data")
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat",
             "retina", "hubble_deep_field", "camera", "motorcycle_left"]
    photos = []
    for name in names:
        try:
            array = getattr(skimage_data, name)()
        except Exception:  # a photo that needs a download (pooch) is left out
            continue
        if isinstance(array, tuple):
            array = array[0]
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
        for scale in (1.0, 0.6, 0.35):
            size = (max(32, int(image.width * scale)), max(32, int(image.height * scale)))
            resized = image.resize(size, Image.BILINEAR)
            photos.append(_jpeg(resized, quality=90))
            box = (0, 0, resized.width * 3 // 4, resized.height)
            photos.append(_jpeg(resized.crop(box), quality=80))
    assert len(photos) >= 30
    return photos


def test_device_path_matches_cpu_path_on_real_and_generated_images(actors, jpegs):
    values = _real_photos() + jpegs
    cpu, cpu_errors = _infer(actors["cpu"], values)
    gpu, gpu_errors = _infer(actors["gpu"], values)
    assert cpu_errors == gpu_errors == [None] * len(values)
    cpu, gpu = np.array(cpu), np.array(gpu)
    agree = (cpu.argmax(1) == gpu.argmax(1)).mean()
    largest = float(np.abs(cpu - gpu).max())
    print(f"\ntop-1 agreement {agree:.4f} over {len(values)} rows; "
          f"largest logit difference {largest:.4g} (logits up to {np.abs(cpu).max():.3g})")
    assert agree >= 0.99
    assert largest < 0.05 * np.abs(cpu).max()


def test_routing_each_row_gets_the_cpu_paths_answer(actors):
    rgb = _photo(seed=1)
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    baseline = _jpeg(rgb)
    values = [_jpeg(rgb.convert("CMYK")), _jpeg(rgb, progressive=True), png.getvalue(),
              baseline[:len(baseline) // 3], _jpeg(rgb.convert("L")), baseline, None, b"",
              b"\xff\xd8\xff\xe0 not really a JPEG", _jpeg(Image.new("RGB", (3000, 2)))]
    cpu, cpu_errors = _infer(actors["cpu"], values)
    gpu, gpu_errors = _infer(actors["gpu"], values)
    assert gpu_errors == cpu_errors
    assert cpu_errors[3].startswith("truncated or corrupt image data")
    assert [e is None for e in cpu_errors] == [True] * 3 + [False, True, True] + [False] * 4
    for row in (0, 1, 2, 4, 5):
        assert np.allclose(cpu[row], gpu[row], atol=0.05 * np.abs(cpu[row]).max()), row
        assert np.argmax(cpu[row]) == np.argmax(gpu[row])


def test_a_failing_device_decode_is_split_in_halves_then_on_cpu(actors, jpegs, monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    calls = []
    bad = bytes(jpegs[1])

    def flaky(data, *args, **kwargs):
        calls.append(len(data) if isinstance(data, list) else 1)
        rows = data if isinstance(data, list) else [data]
        if any(row.numpy().tobytes() == bad for row in rows):
            raise RuntimeError("nvjpeg says no")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    values = jpegs[:4]
    gpu, errors = _infer(actors["gpu"], values)
    cpu, _ = _infer(actors["cpu"], values)
    assert errors == [None] * 4
    assert np.allclose(gpu[1], cpu[1], atol=1e-3)  # the CPU decoder took row 1: PIL's pixels
    # One batched call, then halves down to the bad row: about 2 log2(n) more, not n.
    assert len(calls) <= 1 + 2 * math.ceil(math.log2(len(values)))


def test_model_failure_splits_and_fails_only_the_row(model, jpegs):
    spec, arrays = model
    actor = InferenceActor(spec, arrays, ActorSettings(decode="gpu", torch_threads=1,
                                                      batch_size=4), "test", 1)
    forward = actor.runner.forward

    def fragile(batch):
        if batch.shape[0] > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(batch)

    actor.runner.forward = fragile
    predictions, errors = _infer(actor, jpegs[:4])
    assert errors == [None] * 4 and all(p is not None for p in predictions)
    assert actor.stats()["split_retries"] >= 1


# --- settings -------------------------------------------------------------------------

def test_channels_last_on_cpu_lays_out_the_batches_and_leaves_the_weights_shared():
    import torchvision

    from hybrid_infer.actor.runner import ModelRunner

    module = torchvision.models.resnet18(num_classes=10).eval()
    addresses = [p.data_ptr() for p in module.parameters()]
    runner = ModelRunner(module, device="cpu", channels_last=True)
    assert [p.data_ptr() for p in runner.module.parameters()] == addresses  # no copy
    seen = []
    module.conv1.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    batch = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        plain = module(batch).numpy()
    assert seen == [False]
    np.testing.assert_allclose(runner.forward(batch), plain, atol=1e-5, rtol=0)
    assert seen == [False, True]
    linear = ModelRunner(torch.nn.Linear(4, 2), device="cpu", channels_last=True)
    assert linear.forward(torch.rand(3, 4)).shape == (3, 2)  # not an image batch: as is


def test_device_defaults_and_decode_setting():
    from hybrid_infer.errors import ConfigurationError

    cpu = ActorSettings().for_device("cpu")
    assert (cpu.batch_size, cpu.precision, cpu.channels_last) == (32, "fp32", True)
    cuda = ActorSettings().for_device("cuda")
    assert (cuda.batch_size, cuda.precision, cuda.channels_last) == (256, "bf16", True)
    explicit = ActorSettings(batch_size=8, precision="fp32", channels_last=False)
    assert explicit.for_device("cuda") == explicit
    assert ActorSettings(optimize="freeze").for_device("cuda").precision == "fp32"
    assert PoolSettings(decode="cpu").actor.decode == "cpu"
    with pytest.raises(ConfigurationError):
        ActorSettings(decode="nvjpeg")
    from hybrid_infer.cli import _pool_settings, build_parser

    args = build_parser().parse_args(["pool", "start", "--decode", "cpu", "--no-channels-last"])
    settings = _pool_settings(args).actor
    assert settings.decode == "cpu" and settings.channels_last is False
    assert settings.batch_size is None and settings.precision is None


def test_actor_data_path_imports_without_ray_or_pyspark():
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'pyspark', 'raydp'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import hybrid_infer.actor.inference, hybrid_infer.actor.pipeline, hybrid_infer.actor.runner
import hybrid_infer.actor.device_pipeline, hybrid_infer.decode, hybrid_infer.pool.settings
import hybrid_infer.demo_data, hybrid_infer.models, hybrid_infer.weights, hybrid_infer.modes.udf
import importlib.util
spec = importlib.util.spec_from_file_location('gpu_actor', 'benchmarks/gpu_actor.py')
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the GPU benchmark's imports
assert not any(m.split('.')[0] in ('ray', 'pyspark') for m in sys.modules)
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cpu_decode_pool_threads_and_processes_agree(jpegs):
    for kind in ("thread", "process"):
        pool = CpuDecodePool(workers=1, kind=kind)
        try:
            pixels, reasons = pool.submit(jpegs[:3] + [b"nope"], Preprocess()).result(timeout=120)
        finally:
            pool.shutdown()
        assert pixels.shape == (4, 224, 224, 3) and pixels.dtype == np.uint8
        assert reasons[:3] == [None] * 3 and reasons[3].startswith("not an image")
        assert np.array_equal(pixels[0], decode_uint8(jpegs[0], Preprocess()))
