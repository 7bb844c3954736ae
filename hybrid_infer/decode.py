"""Bytes -> model-ready tensors, with a short per-row reason when a value is not an image.

Both the baseline UDF and the pool's actors decode through `ImageDecoder`, so every
mode sees the same pixels and the modes' predictions can be compared exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Images with more pixels than this are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000


class DecodeError(ValueError):
    """A row's value cannot become a model input; str(error) is the per-row reason."""


@dataclass(frozen=True)
class Preprocess:
    """The torchvision ImageNet transform by default: Resize, CenterCrop, ToTensor, Normalize."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: The resize's interpolation ("bilinear" or "bicubic": pretrained weights name theirs).
    interpolation: str = "bilinear"

    def transform(self):
        from torchvision import transforms

        return transforms.Compose([
            transforms.Resize(self.resize, transforms.InterpolationMode(self.interpolation)),
            transforms.CenterCrop(self.crop),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])


class ImageDecoder:
    """Callable bytes -> CHW float tensor; raises DecodeError with the reason."""

    def __init__(self, preprocess: Preprocess | None = None):
        self.preprocess = preprocess or Preprocess()
        self._transform = self.preprocess.transform()

    def __call__(self, data):
        image = open_rgb(data, self.preprocess.max_pixels)
        _check_resized_size(image.size, self.preprocess)
        return self._transform(image)


def _check_resized_size(size: tuple[int, int], preprocess: Preprocess) -> None:
    """Refuse an image whose shorter-side resize would itself be a bomb (e.g. 2x3000)."""
    width, height = size
    short, long = min(width, height), max(width, height)
    resized = preprocess.resize * max(preprocess.resize, long * preprocess.resize // short)
    if resized > preprocess.max_pixels:
        raise DecodeError(
            f"extreme aspect ratio: {width}x{height} would resize to {resized} pixels, over "
            f"the limit of {preprocess.max_pixels} (raise max_pixels to accept it)")


#: Leading bytes of the formats users store; a value that starts like one of them but
#: that PIL cannot open has a corrupt header rather than being some other kind of file.
_SIGNATURES = {b"\xff\xd8": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP",
               b"RIFF": "WEBP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _signature(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


#: The only PIL formats a row is opened as: built-in decoders, no external programs.
#: PIL would otherwise try every plugin it has, and hand EPS/PS to Ghostscript.
#: (JPEG includes MPO, the multi-picture JPEG of phone cameras: PIL opens it as JPEG.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

#: Leading bytes of formats that are refused (named in the row's error).
_REFUSED_SIGNATURES = {b"%!PS": "PostScript/EPS", b"\xc5\xd0\xd3\xc6": "EPS",
                       b"%PDF": "PDF"}


#: Content of a row that sources.read_images made for a file it could not read; the
#: reason follows. No image starts with a NUL byte and this text.
UNREADABLE_MARKER = b"\x00hybrid-infer unreadable file\x00"


def open_rgb(data, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode image bytes to an RGB PIL image (first frame of an animation)."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise DecodeError("null value")
    if len(data) == 0:
        raise DecodeError("empty value (0 bytes)")
    if bytes(data[:len(UNREADABLE_MARKER)]) == UNREADABLE_MARKER:
        reason = bytes(data[len(UNREADABLE_MARKER):]).decode("utf-8", "replace")
        raise DecodeError(f"unreadable file: {reason}")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        fmt = _signature(data)
        if fmt:
            raise DecodeError(f"corrupt image header: starts like {fmt} but cannot be "
                              "parsed") from None
        refused = next((name for magic, name in _REFUSED_SIGNATURES.items()
                        if bytes(data[:4]) == magic), None)
        if refused:
            raise DecodeError(f"unsupported image format: {refused} is not decoded (only "
                              f"{', '.join(ALLOWED_FORMATS)})") from None
        raise DecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except OSError as exc:
        raise DecodeError(f"corrupt image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height} pixels exceeds the "
            f"limit of {max_pixels} (raise max_pixels to accept it)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"truncated or corrupt image data ({image.format}): {exc}") from None
    return _to_rgb(image)


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: convert("RGB") would clip at 255; scale 0..65535 to 0..255.
        pixels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if pixels.max(initial=0) > 255 or image.mode != "I" else 1.0
        grey = np.clip(np.rint(pixels / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


class ArrayDecoder:
    """Callable for non-image rows: a numeric array (flat, or nested lists) -> a float32
    tensor of `shape`, with no image decoding; raises DecodeError with the reason."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def __call__(self, value):
        import torch

        if value is None:
            raise DecodeError("null value")
        array = np.asarray(value, dtype=np.float32)
        if array.size != int(np.prod(self.shape)):
            raise DecodeError(f"{array.size} values cannot be reshaped to {list(self.shape)}")
        return torch.from_numpy(array.reshape(self.shape))
