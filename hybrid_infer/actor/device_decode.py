"""JPEG decode and the ImageNet transform on the actor's device (any device).

- `JpegDecoder`: batched JPEG decode by one backend, chosen at actor start by decoding a
  tiny JPEG on the device: torchcodec's `decode_jpeg` when it is installed and works
  (the successor of torchvision's image decoders), else torchvision's (deprecated in
  torchvision 0.29, its DeprecationWarning silenced). None works (a torchvision built
  without nvJPEG, the decoders removed): the actor decodes on the CPU instead. A batch
  the backend refuses as a whole is split in halves, so one bad row costs about
  2*log2(n) extra calls rather than n.
- `resize_crop_into` and `Normalizer`: torchvision's Resize + CenterCrop + ToTensor +
  Normalize on uint8 CHW tensors, as PIL computes them.
- `pixel_groups`: rows grouped so that one decode call holds at most a pixel budget of
  decoded images on the device.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings

from hybrid_infer.actor.batching import is_device_fatal, is_out_of_memory
from hybrid_infer.decode import Preprocess, center_crop_box, resized_size

log = logging.getLogger(__name__)

#: Decoded pixels one decode call may hold on the device (x3 bytes, RGB uint8): 2^26 is
#: about 200 MB, e.g. 256 ImageNet-size images or five 12-megapixel photographs.
DEFAULT_PIXEL_BUDGET = 1 << 26

#: Backends tried in this order at actor start.
JPEG_BACKENDS = ("torchcodec", "torchvision")

#: torchvision 0.29's warning on every decode call (the decoders move to torchcodec).
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def _backend_function(name: str):
    """The backend's decode_jpeg(list of 1-D uint8 CPU tensors, device) -> list of uint8
    CHW RGB tensors; raises ImportError when the backend is not installed."""
    if name == "torchcodec":
        from torchcodec.decoders import decode_jpeg

        return lambda encoded, device: decode_jpeg(encoded, mode="RGB", device=device)
    if name == "torchvision":
        import torchvision.io

        if not hasattr(torchvision.io, "decode_jpeg"):
            raise ImportError(f"torchvision {torchvision.__version__} has no decode_jpeg")
        # Process-wide, once: a warning per decode call would flood the actor's log.
        warnings.filterwarnings("ignore", message=_TORCHVISION_DEPRECATION,
                                category=DeprecationWarning)
        # Looked up per call, so a test can inject a fault by replacing it.
        return lambda encoded, device: torchvision.io.decode_jpeg(
            encoded, mode=torchvision.io.ImageReadMode.RGB, device=device)
    raise ValueError(f"unknown JPEG backend {name!r}: use one of {JPEG_BACKENDS}")


def tiny_jpeg() -> bytes:
    """A 16x16 baseline JPEG: what the start-up probe decodes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


#: Backends that apply a JPEG's EXIF orientation (torchcodec 0.17 always does, with no
#: option; torchvision does not by default, nor does the CPU path's PIL decode).
_ROTATES_BY_EXIF = frozenset({"torchcodec"})


class JpegDecoder:
    """Batched JPEG decode on `device` by one backend (see the module doc).
    `rotates_by_exif`: the backend applies EXIF orientation, so rows carrying one go to
    the CPU decoder (which does not) to keep the CPU path's pixels."""

    def __init__(self, backend: str, device: str):
        self.backend = backend
        self.device = device
        self.rotates_by_exif = backend in _ROTATES_BY_EXIF
        self._decode = _backend_function(backend)

    @classmethod
    def choose(cls, device: str, backends=None) -> tuple["JpegDecoder | None", dict]:
        """The first of `backends` (default JPEG_BACKENDS) that decodes a tiny JPEG on
        `device` correctly, and why each one before it was passed over ({backend: reason})."""
        import torch

        probe = torch.frombuffer(bytearray(tiny_jpeg()), dtype=torch.uint8)
        refused = {}
        for backend in backends or JPEG_BACKENDS:
            try:
                decoder = cls(backend, device)
                image = decoder._decode([probe], device)[0]
                if tuple(image.shape) != (3, 16, 16) or abs(int(image[0].float().mean()) - 200) > 8:
                    raise ValueError(f"decoded the probe wrong: shape {tuple(image.shape)}")
                return decoder, refused
            except Exception as exc:
                refused[backend] = f"{type(exc).__name__}: {exc}"[:300]
        return None, refused

    def decode(self, encoded: list, stats=None) -> list:
        """Decoded uint8 CHW RGB images on the device for 1-D uint8 CPU tensors of JPEG
        bytes; None for a row the decoder refused. One call for the batch; when it
        raises, each half is tried again, down to single rows. An unrecoverable device
        error is raised, not split."""
        if not encoded:
            return []
        if stats is not None:
            stats.add(device_decode_calls=1)
        try:
            return list(self._decode(encoded, self.device))
        except Exception as exc:
            if is_device_fatal(exc) or is_out_of_memory(exc):
                raise
            if len(encoded) == 1:
                return [None]
        middle = len(encoded) // 2
        return self.decode(encoded[:middle], stats) + self.decode(encoded[middle:], stats)


def pixel_groups(pixels: list[int], budget: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of consecutive rows whose decoded pixels add up to at most
    `budget` (a row over it alone makes its own range)."""
    groups, lo, total = [], 0, 0
    for position, count in enumerate(pixels):
        if position > lo and total + count > budget:
            groups.append((lo, position))
            lo, total = position, 0
        total += count
    if lo < len(pixels):
        groups.append((lo, len(pixels)))
    return groups


def resize_crop_into(out, image, preprocess: Preprocess) -> None:
    """torchvision's Resize(resize) + CenterCrop(crop) of one uint8 CHW image (any device)
    written into `out` (uint8 (3, crop, crop) on the same device). Antialiased bilinear,
    rounded to uint8 as PIL does; zero padding where the crop exceeds the image."""
    import torch.nn.functional as F

    if image.shape[0] == 1:  # greyscale -> 3 channels
        image = image.expand(3, -1, -1)
    height, width = image.shape[-2:]
    new_width, new_height = resized_size(width, height, preprocess.resize)
    if (new_width, new_height) != (width, height):
        batch = image.unsqueeze(0)
        if image.device.type == "cpu":  # a native uint8 kernel, rounding like PIL
            image = F.interpolate(batch, size=(new_height, new_width), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
        else:
            image = F.interpolate(batch.float(), size=(new_height, new_width),
                                  mode="bilinear", antialias=True,
                                  align_corners=False)[0].round_()  # stays in 0..255
    crop = preprocess.crop
    left, top, _, _ = center_crop_box(new_width, new_height, crop)
    if left >= 0 and top >= 0 and left + crop <= new_width and top + crop <= new_height:
        out.copy_(image[:, top:top + crop, left:left + crop])
        return
    out.zero_()  # the crop is larger than the resized image: zero padding around it
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + crop, new_height), min(left + crop, new_width)
    out[:, src_top - top:src_bottom - top, src_left - left:src_right - left].copy_(
        image[:, src_top:src_bottom, src_left:src_right])


class Normalizer:
    """uint8 NCHW -> ToTensor + Normalize: (x / 255 - mean) / std, in `dtype` (computed in
    float32) and, with channels_last, that memory format. Its constants are made once
    per device, not per batch."""

    def __init__(self, preprocess: Preprocess, dtype=None, channels_last: bool = False):
        self.preprocess = preprocess
        self.dtype = dtype
        self.channels_last = channels_last
        self._constants: dict = {}
        self._lock = threading.Lock()

    def _scale_shift(self, device):
        import torch

        key = str(device)
        with self._lock:  # decode threads share them: made once, finished before use
            if key not in self._constants:
                mean = torch.tensor(self.preprocess.mean, dtype=torch.float32)
                std = torch.tensor(self.preprocess.std, dtype=torch.float32)
                scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
                shift = (mean / std).view(1, -1, 1, 1).to(device)
                if scale.device.type == "cuda":  # other threads read them on other streams
                    torch.cuda.current_stream(scale.device).synchronize()
                self._constants[key] = (scale, shift)
            return self._constants[key]

    def __call__(self, batch):
        import torch

        scale, shift = self._scale_shift(batch.device)
        out = batch.to(torch.float32).mul_(scale).sub_(shift)
        if self.dtype is not None and self.dtype != torch.float32:
            out = out.to(self.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def normalize(batch, preprocess: Preprocess, dtype=None, channels_last: bool = False):
    """Normalizer(preprocess, dtype, channels_last)(batch), for one-off use."""
    return Normalizer(preprocess, dtype, channels_last)(batch)


@contextlib.contextmanager
def synchronized(stream):
    """Waits for `stream` (a CUDA stream; None on CPU) when the block ends, raising or
    not: kernels queued before an error still write into their blocks, which must not be
    handed to the next decode before they finish. A synchronisation error after the
    block's own error is logged, the block's error raised."""
    try:
        yield
    except BaseException:
        if stream is not None:
            try:
                stream.synchronize()
            except Exception as exc:
                log.warning("synchronising after a failed batch also failed: %s", exc)
        raise
    if stream is not None:
        stream.synchronize()
