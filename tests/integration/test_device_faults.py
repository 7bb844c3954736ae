"""The device data path under faults, on CPU (torchvision's CPU decoder stands in for
nvJPEG): a refused batch split in halves, the pixel budget, out-of-memory rerouted to the
CPU decoder, CUDA errors that fail the actor, guarded threads, a broken CPU worker pool
rebuilt, the decoder chosen at start, and the pipelines' interface (issue 19, issue 20
item 9). Faults are injected by replacing the decoder or the model call of real objects."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from hybrid_infer.actor.batching import (ActorPipeline, DecodePath, DeviceFailedError,
                                         DeviceHealth, RowRequest, is_device_fatal)
from hybrid_infer.actor.cpu_decode import CpuDecodePool, default_cpu_workers
from hybrid_infer.actor.device_decode import (JpegDecoder, Normalizer, _backend_function,
                                              normalize, pixel_groups, synchronized)
from hybrid_infer.actor.device_pipeline import DevicePipeline
from hybrid_infer.actor.inference import InferenceActor
from hybrid_infer.transport.protocol import RequestOptions
from hybrid_infer.actor.pipeline import InferencePipeline
from hybrid_infer.actor.runner import ModelRunner
from hybrid_infer.decode import Preprocess, device_decodable_pixels, jpeg_header
from hybrid_infer.demo_data import generate_jpegs
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.settings import ActorSettings
from hybrid_infer.weights import state_dict_to_arrays

CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    paths = generate_jpegs(str(tmp_path_factory.mktemp("jpegs")), 12, seed=5)
    return [open(path, "rb").read() for path in paths]


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    return ModelRunner(module, device="cpu")


@pytest.fixture(scope="module")
def model():
    spec = ModelSpec("mobilenet_v3_small", weights="random", seed=0)
    return spec, state_dict_to_arrays(spec.load_state_dict())


def _column(values: list) -> pa.Array:
    return pa.array(values, pa.binary())


def _pipeline(runner, decoder, **kwargs) -> DevicePipeline:
    kwargs.setdefault("batch_size", 8)
    return DevicePipeline(runner, kwargs.pop("batch_size"), Preprocess(),
                          kwargs.pop("cpu_pool", None) or CpuDecodePool(1, kind="thread"),
                          jpeg_decoder=decoder, **kwargs)


def _reference(runner, jpegs):
    """The CPU decoder's answers for the same rows (no device decoder)."""
    pipeline = _pipeline(runner, None)
    try:
        outputs, errors = pipeline.run(_column(jpegs), None, timeout=120)
    finally:
        pipeline.close()
    assert errors == [None] * len(jpegs)
    return outputs


class RefusesBad(JpegDecoder):
    """The backend refuses a whole call when one row is bad, as torchvision does."""

    def __init__(self, bad: set[bytes]):
        super().__init__("torchvision", "cpu")
        self.bad, self.calls = bad, []
        decode = self._decode

        def refusing(encoded, device):
            self.calls.append(len(encoded))
            if any(row.numpy().tobytes() in self.bad for row in encoded):
                raise RuntimeError("decode_jpegs_cuda: image 3 is not a baseline JPEG")
            return decode(encoded, device)

        self._decode = refusing


class FailsWith(JpegDecoder):
    """Every decode call raises `error` (while `remaining` > 0)."""

    def __init__(self, error: Exception, times: int = 10**9):
        super().__init__("torchvision", "cpu")
        self.error, self.remaining = error, times

    def decode(self, encoded, stats=None):
        if self.remaining > 0:
            self.remaining -= 1
            raise self.error
        return super().decode(encoded, stats)


# --- item 2: a refused batch is split in halves ------------------------------------------

def test_a_refused_batch_costs_about_two_log2_calls_not_one_per_row(jpegs):
    rows = [torch.frombuffer(bytearray(jpegs[i % len(jpegs)]), dtype=torch.uint8)
            for i in range(64)]
    bad = b"\xff\xd8 a row the backend refuses"
    rows[37] = torch.frombuffer(bytearray(bad), dtype=torch.uint8)
    decoder = RefusesBad({bad})
    images = decoder.decode(rows)
    assert [i for i, image in enumerate(images) if image is None] == [37]
    assert all(image.shape[0] == 3 for i, image in enumerate(images) if i != 37)
    assert len(decoder.calls) <= 1 + 2 * math.ceil(math.log2(64))  # 13, not 65


def test_a_refused_row_is_answered_by_the_cpu_decoder(runner, jpegs):
    reference = _reference(runner, jpegs[:8])
    decoder = RefusesBad({jpegs[5]})
    pipeline = _pipeline(runner, decoder)
    try:
        outputs, errors = pipeline.run(_column(jpegs[:8]), None, timeout=120)
    finally:
        pipeline.close()
    assert errors == [None] * 8
    np.testing.assert_allclose(outputs[5], reference[5], atol=1e-5)  # PIL's pixels
    assert pipeline.stats.device_decode_failures == 1


# --- item 3: device memory bounded by a pixel budget ---------------------------------------

def test_pixel_groups_keep_each_call_within_the_budget():
    assert pixel_groups([], 10) == []
    assert pixel_groups([4, 4, 4, 4], 8) == [(0, 2), (2, 4)]
    assert pixel_groups([3, 20, 3, 3], 8) == [(0, 1), (1, 2), (2, 4)]  # too big: alone
    counts = list(np.random.default_rng(0).integers(1, 50, 200))
    groups = pixel_groups(counts, 60)
    assert [i for lo, hi in groups for i in range(lo, hi)] == list(range(200))
    assert all(sum(counts[lo:hi]) <= 60 or hi - lo == 1 for lo, hi in groups)


def test_a_small_pixel_budget_decodes_in_more_calls_with_the_same_answers(runner, jpegs):
    answers = {}
    for budget in (1 << 26, 1):  # everything in one call / one image per call
        pipeline = _pipeline(runner, JpegDecoder("torchvision", "cpu"), pixel_budget=budget,
                             batch_size=len(jpegs), linger_s=5.0)
        try:
            answers[budget] = pipeline.run(_column(jpegs), None, timeout=120)
        finally:
            pipeline.close()
        calls = pipeline.stats.device_decode_calls
        assert calls == 1 if budget > 1 else calls == len(jpegs), (budget, calls)
    assert answers[1][1] == [None] * len(jpegs)
    np.testing.assert_array_equal(answers[1][0], answers[1 << 26][0])


def test_out_of_memory_while_decoding_sends_the_rows_to_the_cpu_decoder(runner, jpegs):
    reference = _reference(runner, jpegs[:6])
    decoder = FailsWith(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB"),
                        times=1)
    pipeline = _pipeline(runner, decoder)
    try:
        outputs, errors = pipeline.run(_column(jpegs[:6]), None, timeout=120)
        assert errors == [None] * 6
        np.testing.assert_allclose(outputs, reference, atol=1e-5)
        assert pipeline.stats.out_of_memory_reroutes == 6
        # The decoder recovered: the next request decodes on the device again.
        _, errors = pipeline.run(_column(jpegs[:6]), None, timeout=120)
        assert errors == [None] * 6 and pipeline.stats.device_decode_calls >= 1
    finally:
        pipeline.close()


def test_out_of_memory_in_normalisation_ends_in_a_reason_not_a_loop(runner, jpegs):
    pipeline = _pipeline(runner, JpegDecoder("torchvision", "cpu"))

    def never_fits(batch):
        raise torch.OutOfMemoryError("CUDA out of memory (normalisation)")

    pipeline._normalize = never_fits
    try:
        _, errors = pipeline.run(_column(jpegs[:5] + [b"not an image"]), None, timeout=120)
    finally:
        pipeline.close()
    # JPEG rows: device -> OOM -> CPU decoder -> OOM again -> the row fails with the reason.
    assert all(e.startswith("out of memory: OutOfMemoryError") for e in errors[:5]), errors
    assert errors[5] == "not an image (unrecognised format)"


# --- item 4: recovery ----------------------------------------------------------------------

class RecordingStream:
    def __init__(self, fails: bool = False):
        self.synchronized, self.fails = 0, fails

    def synchronize(self):
        self.synchronized += 1
        if self.fails:
            raise RuntimeError("sticky")


def test_the_stream_is_synchronised_when_preparing_fails_too():
    stream = RecordingStream()
    with synchronized(stream):
        pass
    assert stream.synchronized == 1
    with pytest.raises(ValueError, match="midway"), synchronized(stream):
        raise ValueError("midway")
    assert stream.synchronized == 2
    broken = RecordingStream(fails=True)  # the block's own error is the one raised
    with pytest.raises(ValueError, match="midway"), synchronized(broken):
        raise ValueError("midway")
    with synchronized(None):  # CPU: nothing to wait for
        pass


def test_a_failure_outside_the_model_call_fails_the_batch_not_the_thread(runner, jpegs):
    pipeline = _pipeline(runner, JpegDecoder("torchvision", "cpu"))
    forward = runner.forward
    try:
        runner.forward = lambda batch: np.zeros(len(batch), dtype=np.float32)  # 1-D: unusable
        _, errors = pipeline.run(_column(jpegs[:3]), None, timeout=60)
        assert all(e.startswith("model failed: IndexError") for e in errors), errors
        runner.forward = forward
        outputs, errors = pipeline.run(_column(jpegs[:3]), None, timeout=60)  # the thread lives
        assert errors == [None] * 3 and outputs.shape == (3, 10)
    finally:
        runner.forward = forward
        pipeline.close()


def test_cuda_errors_are_told_from_out_of_memory_and_bad_data():
    assert is_device_fatal(torch.AcceleratorError(CUDA_FAULT))
    assert is_device_fatal(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_device_fatal(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_device_fatal(RuntimeError("nvjpegDecode failed: 6"))
    assert not is_device_fatal(ValueError("CUDA error but not a runtime error"))


@pytest.mark.parametrize("where", ["model", "decoder"])
def test_a_cuda_error_fails_the_actor_so_that_the_pool_replaces_it(model, jpegs, where):
    spec, arrays = model
    actor = InferenceActor(spec, arrays, ActorSettings(decode="gpu", torch_threads=1,
                                                      batch_size=4), "test", 0)
    batch = pa.RecordBatch.from_arrays([_column(jpegs[:4])], ["content"])
    try:
        assert actor.ping() and actor.stats()["device_failed"] is False
        if where == "model":
            def faulty(inputs):
                raise torch.AcceleratorError(CUDA_FAULT)

            actor.runner.forward = faulty
        else:
            actor._jpeg_decoder.decode = FailsWith(torch.AcceleratorError(CUDA_FAULT)).decode
        errors = actor.infer(batch, RequestOptions()).column("error").to_pylist()
        assert all(e is not None and "illegal memory access" in e for e in errors), errors
        assert actor.stats()["device_failed"] is True
        with pytest.raises(DeviceFailedError, match="the pool replaces the actor"):
            actor.ping()  # the manager's heal pings: a raise replaces the actor
        with pytest.raises(DeviceFailedError):
            actor.infer(batch, RequestOptions())  # no more answers from a broken device
    finally:
        actor.close()


# --- item 5: CPU decode workers ------------------------------------------------------------

def test_cpu_decode_workers_come_from_rays_cpus():
    assert default_cpu_workers(1.0) == 1
    assert default_cpu_workers(2.5) == 2
    assert default_cpu_workers(12) == 11
    assert default_cpu_workers(None) == max(1, len(os.sched_getaffinity(0)) - 1)


def test_a_broken_cpu_decode_pool_is_rebuilt_and_the_rows_decoded(runner, jpegs):
    pool = CpuDecodePool(1, kind="process")
    pipeline = _pipeline(runner, None, cpu_pool=pool)
    try:
        pool.warm_up()
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        outputs, errors = pipeline.run(_column(jpegs[:4]), None, timeout=180)
        assert errors == [None] * 4 and outputs.shape == (4, 10)
        assert pool.rebuilds == 1 and pipeline.stats.cpu_pool_rebuilds == 1
        assert pool.worker_pids() and pool.worker_pids() != [pid]
    finally:
        pipeline.close()
        pool.shutdown()


# --- item 6: the decoder chosen at start ------------------------------------------------------

def test_the_decoder_is_probed_at_start_and_torchvision_warns_no_more():
    decoder, refused = JpegDecoder.choose("cpu")
    try:
        import torchcodec  # noqa: F401
        assert decoder.backend == "torchcodec"
    except ImportError:
        assert decoder.backend == "torchvision"
        assert "ModuleNotFoundError" in refused["torchcodec"]
    decode = _backend_function("torchvision")
    with warnings.catch_warnings(record=True) as caught:
        image = decode([torch.frombuffer(bytearray(_tiny()), dtype=torch.uint8)], "cpu")[0]
    assert image.shape == (3, 16, 16)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], caught


def _tiny() -> bytes:
    from hybrid_infer.actor.device_decode import tiny_jpeg

    return tiny_jpeg()


def test_no_working_device_decoder_falls_back_to_cpu_decode_with_one_log_line(
        model, jpegs, monkeypatch, caplog):
    import torchvision.io

    def removed(*args, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    from hybrid_infer.actor import device_decode

    monkeypatch.setattr(torchvision.io, "decode_jpeg", removed)
    monkeypatch.setattr(device_decode, "JPEG_BACKENDS", ("torchvision",))  # torchcodec too
    assert JpegDecoder.choose("cpu")[0] is None
    spec, arrays = model
    with caplog.at_level(logging.WARNING, logger="hybrid_infer.actor.inference"):
        actor = InferenceActor(spec, arrays, ActorSettings(decode="gpu", torch_threads=1),
                               "test", 0)
    try:
        lines = [record.getMessage() for record in caplog.records
                 if "no JPEG decoder works" in record.getMessage()]
        assert len(lines) == 1 and "not compiled with nvJPEG" in lines[0]
        assert actor.decode is DecodePath.CPU_PROCESSES and actor.stats()["decode"] == "cpu-uint8"
        batch = pa.RecordBatch.from_arrays([_column(jpegs[:3])], ["content"])
        assert actor.infer(batch).column("error").to_pylist() == [None] * 3
    finally:
        actor.close()


def _rotated_jpegs() -> list[bytes]:
    """A 60x40 JPEG with EXIF orientation 6, its EXIF little-endian (PIL) and big-endian."""
    import io
    import struct

    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    little = io.BytesIO()
    image.save(little, format="JPEG", exif=exif.tobytes())
    plain = io.BytesIO()
    image.save(plain, format="JPEG")
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(
        ">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    big = plain.getvalue()[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 \
        + plain.getvalue()[2:]
    return [little.getvalue(), big]


def test_exif_rotated_rows_skip_a_decoder_that_rotates_them(runner):
    """torchcodec applies EXIF orientation (always); the CPU path does not: such rows go
    to the CPU decoder when the device decoder would rotate them."""
    rotated = _rotated_jpegs()
    for data in rotated:
        view = memoryview(np.frombuffer(data, dtype=np.uint8))
        assert jpeg_header(view, 0, len(data))[5] == 6
        assert device_decodable_pixels(view, 0, len(data), Preprocess()) == 60 * 40
        assert device_decodable_pixels(view, 0, len(data), Preprocess(),
                                       rotates_by_exif=True) == 0
    reference = _reference(runner, rotated)
    decoder = JpegDecoder("torchvision", "cpu")
    decoder.rotates_by_exif = True  # as torchcodec's
    pipeline = _pipeline(runner, decoder)
    try:
        outputs, errors = pipeline.run(_column(rotated), None, timeout=120)
    finally:
        pipeline.close()
    assert errors == [None, None] and pipeline.stats.cpu_decoded_rows == 2
    np.testing.assert_allclose(outputs, reference, atol=1e-5)


# --- item 7 and issue 20 item 9: the smaller items, one interface ---------------------------

def test_normalizer_builds_its_constants_once_and_matches_normalize():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    normalizer = Normalizer(Preprocess(), torch.bfloat16, channels_last=True)
    first, second = normalizer(batch), normalizer(batch)
    assert len(normalizer._constants) == 1 and torch.equal(first, second)
    assert first.dtype == torch.bfloat16 and first.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(normalize(batch, Preprocess()), first.float(), atol=0.05)


def test_concurrent_first_calls_build_one_device_pipeline(model):
    spec, arrays = model
    actor = InferenceActor(spec, arrays, ActorSettings(decode="gpu", torch_threads=1), "t", 0)
    try:
        barrier, built = threading.Barrier(8), []

        def first_call():
            barrier.wait()
            built.append(actor._pipeline_for(RequestOptions(), pa.binary()))

        threads = [threading.Thread(target=first_call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(built) == 8 and len({id(p) for p in built}) == 1
        assert isinstance(built[0], DevicePipeline) and isinstance(built[0], ActorPipeline)
        assert isinstance(actor._pipeline_for(RequestOptions(input_shape=(3,)), pa.binary()),
                          InferencePipeline)
    finally:
        actor.close()
    for thread in built[0]._threads:  # close() stops the pipeline's threads
        thread.join(timeout=10)
        assert not thread.is_alive(), thread.name


def test_decode_path_is_chosen_by_a_typed_value():
    assert DecodePath.for_setting("auto", "cpu") is DecodePath.THREADS
    assert DecodePath.for_setting("auto", "cuda") is DecodePath.DEVICE
    assert DecodePath.for_setting("gpu", "cpu") is DecodePath.DEVICE
    assert DecodePath.for_setting("cpu", "cuda") is DecodePath.CPU_PROCESSES
    assert DecodePath.for_setting("cpu", "cpu") is DecodePath.THREADS


def test_a_row_request_answers_each_row_once():
    request = RowRequest(3)
    request.set_outputs([0, 2], np.array([[1.0], [3.0]], dtype=np.float32))
    request.set_error(0, "late: ignored")  # already answered
    assert not request.done.is_set()
    request.set_error(1, "bad row")
    assert request.done.is_set()
    assert request.errors == [None, "bad row", None]
    assert request.outputs[:, 0].tolist() == [1.0, 0.0, 3.0]


def test_both_pipelines_share_one_interface_and_refuse_work_after_a_device_failure(runner):
    health = DeviceHealth()
    cpu = InferencePipeline(runner, batch_size=2, decode_threads=1, health=health)
    device = _pipeline(runner, None, health=health)
    try:
        health.fail(torch.AcceleratorError(CUDA_FAULT))
        for pipeline in (cpu, device):
            with pytest.raises(DeviceFailedError, match="illegal memory access"):
                pipeline.run(_column([b"x"]), None, timeout=10)
    finally:
        cpu.close()
        device.close()


def test_in_ray_an_actor_whose_device_failed_exits_and_its_batch_is_not_answered(
        ray_address, model, jpegs):
    """Inside Ray the actor's process ends: Ray reports it dead (the manager's heal
    replaces it, clients resend its unanswered batches) instead of answering errors."""
    import ray

    class BreakableActor(InferenceActor):  # local: Ray ships it by value to the worker
        """The real actor, plus a way for the test to break its device from outside."""

        def break_device(self) -> None:
            def faulty(inputs):
                raise torch.AcceleratorError(CUDA_FAULT)

            self.runner.forward = faulty

    spec, arrays = model
    actor = ray.remote(BreakableActor).options(num_cpus=1).remote(
        spec, arrays, ActorSettings(decode="gpu", torch_threads=1, batch_size=4), "t", 0)
    batch = pa.RecordBatch.from_arrays([_column(jpegs[:4])], ["content"])
    try:
        good = ray.get(actor.infer.remote(batch, RequestOptions()), timeout=180)
        assert good.column("error").to_pylist() == [None] * 4
        ray.get(actor.break_device.remote(), timeout=60)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.infer.remote(batch, RequestOptions()), timeout=120)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.ping.remote(), timeout=60)
    finally:
        ray.kill(actor, no_restart=True)
