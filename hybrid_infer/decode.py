"""Bytes -> model-ready tensors, with a short per-row reason when a value is not an image.

`ImageDecoder` is torchvision's ImageNet transform, as a user's recipe writes it (the
baseline UDF and the benchmark's recipes use it). The pool's CPU actors decode through
`TableImageDecoder`: the same PIL decode, resize and crop, then ToTensor + Normalize as
one table lookup per channel, bit-identical to the transform in a third less CPU time
and laid out channels-last, as the CPU model runs. Every mode sees the same pixels and
the modes' predictions can be compared exactly.
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


class NormalizeTable:
    """torchvision's ToTensor + Normalize for uint8 pixels, as a lookup: each channel's
    256 values go through the same float32 ops ((v / 255 - mean) / std), so the result
    is bit-identical, in one pass over the pixels instead of four."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        import torch

        values = torch.arange(256, dtype=torch.float32).div(255)
        mean_ = torch.tensor(mean, dtype=torch.float32)[:, None]
        std_ = torch.tensor(std, dtype=torch.float32)[:, None]
        self._table = ((values[None, :] - mean_) / std_).numpy()  # (channels, 256)

    def __call__(self, pixels: np.ndarray, channels_last: bool = True):
        """(..., H, W, C) uint8 -> a (..., C, H, W) float32 tensor, stored channels-last
        (channels interleaved, the memory format the CPU model runs in) or contiguous."""
        import torch

        channels = pixels.shape[-1]
        if channels_last:
            out = np.empty(pixels.shape, dtype=np.float32)
            planes = [out[..., channel] for channel in range(channels)]
        else:
            out = np.empty(pixels.shape[:-3] + (channels,) + pixels.shape[-3:-1], np.float32)
            planes = [out[..., channel, :, :] for channel in range(channels)]
        for channel, plane in enumerate(planes):
            np.take(self._table[channel], pixels[..., channel], out=plane)
        tensor = torch.from_numpy(out)
        return tensor.movedim(-1, -3) if channels_last else tensor


class TableImageDecoder:
    """What the pool's CPU actors decode with: bytes -> (crop, crop, 3) uint8 pixels
    (decode_uint8: the same PIL decode, resize and crop as ImageDecoder), and
    `collate(rows)`: their NCHW float32 batch, channels-last, equal bit for bit to
    stacking ImageDecoder's tensors. Raises DecodeError with ImageDecoder's reasons."""

    def __init__(self, preprocess: Preprocess | None = None):
        self.preprocess = preprocess or Preprocess()
        self._normalize = NormalizeTable(self.preprocess.mean, self.preprocess.std)

    def __call__(self, data) -> np.ndarray:
        return decode_uint8(data, self.preprocess)

    def collate(self, rows: list[np.ndarray]):
        return self._normalize(np.stack(rows))


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
#: Content of a row refused before decoding (row_limits.limit_file_rows: a file over
#: max_row_bytes, never read); the row's whole `error` follows.
ROW_ERROR_MARKER = b"\x00hybrid-infer row error\x00"


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
    if bytes(data[:len(ROW_ERROR_MARKER)]) == ROW_ERROR_MARKER:
        raise DecodeError(bytes(data[len(ROW_ERROR_MARKER):]).decode("utf-8", "replace"))
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


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(resize): the shorter side becomes
    `resize`, the longer one keeps the aspect ratio (truncated, as torchvision does)."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """PIL crop box of torchvision's CenterCrop(crop); outside the image is zero padding."""
    boxes = []
    for size in (width, height):
        pad = (crop - size) // 2 if crop > size else 0
        boxes.append(int(round((max(size, crop) - crop) / 2.0)) - pad)
    left, top = boxes
    return left, top, left + crop, top + crop


def pil_filter(interpolation: str) -> int:
    """PIL's resampling filter for a torchvision InterpolationMode value, as torchvision's
    pil_modes_mapping picks it (without importing torchvision: decode worker processes
    stay small)."""
    from PIL import Image

    filters = {"nearest": Image.Resampling.NEAREST, "nearest-exact": Image.Resampling.NEAREST,
               "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
               "lanczos": Image.Resampling.LANCZOS}
    if interpolation not in filters:
        raise ValueError(f"interpolation must be one of {sorted(filters)}, "
                         f"got {interpolation!r}")
    return filters[interpolation]


def decode_uint8(data, preprocess: Preprocess) -> np.ndarray:
    """Bytes -> the (crop, crop, 3) uint8 pixels ImageDecoder normalises: the same PIL
    decode, Resize (its interpolation) and CenterCrop, without ToTensor/Normalize (done
    on the device, or by NormalizeTable).
    Raises DecodeError with the same reasons as ImageDecoder."""
    image = open_rgb(data, preprocess.max_pixels)
    _check_resized_size(image.size, preprocess)
    width, height = resized_size(*image.size, preprocess.resize)
    if (width, height) != image.size:
        image = image.resize((width, height), pil_filter(preprocess.interpolation))
    image = image.crop(center_crop_box(width, height, preprocess.crop))
    return np.asarray(image, dtype=np.uint8)


def decode_uint8_many(values: list, preprocess: Preprocess):
    """decode_uint8 over rows: ((n, crop, crop, 3) uint8, reasons); a failed row's pixels
    are zeros and its reason is set. Runs in CPU decode worker processes (picklable)."""
    crop = preprocess.crop
    pixels = np.zeros((len(values), crop, crop, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(values)
    for position, value in enumerate(values):
        try:
            pixels[position] = decode_uint8(value, preprocess)
        except DecodeError as exc:
            reasons[position] = str(exc)
        except Exception as exc:  # a decoder bug must not lose the row
            reasons[position] = f"decode failed: {type(exc).__name__}: {exc}"
    return pixels, reasons


# --- JPEG headers: what the device decoder (nvJPEG) may be trusted with -----------------

#: Start-of-frame markers: baseline (C0) and extended sequential (C1) Huffman JPEGs
#: are what nvJPEG's batched decode takes; progressive (C2), lossless, hierarchical
#: and arithmetic-coded frames go to the CPU decoder.
_DEVICE_SOF = (0xC0, 0xC1)
_ANY_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: How far before the end an EOI marker may sit (padding some writers append).
_EOI_WINDOW = 64


def _exif_orientation(view, start: int, end: int) -> int | None:
    """The Orientation tag (0x0112) of IFD0 in the TIFF data view[start:end], or None."""
    order = bytes(view[start:start + 2]) if end - start >= 8 else b""
    if order not in (b"II", b"MM"):
        return None
    big = order == b"MM"

    def u16(p: int) -> int:
        return (view[p] << 8 | view[p + 1]) if big else (view[p + 1] << 8 | view[p])

    def u32(p: int) -> int:
        return (u16(p) << 16 | u16(p + 2)) if big else (u16(p + 2) << 16 | u16(p))

    ifd = start + u32(start + 4)
    if ifd + 2 > end:
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * u16(ifd), 12):
        if entry + 12 > end:
            return None
        if u16(entry) == 0x0112:
            return u16(entry + 8)
    return None


def jpeg_header(view, start: int, end: int):
    """(width, height, components, sof_marker, adobe_transform, exif_orientation) of the
    JPEG in view[start:end] (a memoryview or NumPy uint8 array), read from its markers up
    to the frame header; adobe_transform is None without an Adobe APP14 segment, else its
    colour transform (0: none, RGB/CMYK; 1: YCbCr; 2: YCCK); exif_orientation is the
    EXIF Orientation tag (None without one). sof_marker is negated for a precision other
    than 8 bits. None when the value is not a JPEG or its header is unreadable."""
    if end - start < 4 or view[start] != 0xFF or view[start + 1] != 0xD8:
        return None
    pos, adobe, orientation = start + 2, None, None
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if length < 2 or pos + 2 + length > end:
            return None
        if marker == 0xEE and length >= 14 and bytes(view[pos + 4:pos + 9]) == b"Adobe":
            adobe = view[pos + 15]
        elif marker == 0xE1 and length >= 16 and bytes(view[pos + 4:pos + 10]) == b"Exif\x00\x00":
            orientation = _exif_orientation(view, pos + 10, pos + 2 + length)
        elif marker in _ANY_SOF:
            if length < 8:
                return None
            precision = view[pos + 4]
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            components = view[pos + 9]
            sof = marker if precision == 8 else -marker
            return width, height, components, sof, adobe, orientation
        elif marker == 0xDA:  # a scan before any frame header
            return None
        pos += 2 + length
    return None


def has_eoi(view, start: int, end: int) -> bool:
    """The JPEG ends with its EOI marker (FFD9), allowing a little padding after it.
    nvJPEG decodes a truncated file without complaint: a file without its EOI goes
    to the CPU decoder, which reports the truncation."""
    if end - start >= 2 and view[end - 2] == 0xFF and view[end - 1] == 0xD9:
        return True
    tail = bytes(view[max(start + 2, end - _EOI_WINDOW):end])
    return b"\xff\xd9" in tail


def device_decodable_pixels(view, start: int, end: int, preprocess: Preprocess, *,
                            rotates_by_exif: bool = False) -> int:
    """The pixels (width x height) of the JPEG in view[start:end] when the device decoder
    may take it, else 0: an 8-bit baseline/extended JPEG with 1 or 3 components (not
    CMYK/YCCK, not Adobe's untransformed RGB), complete (EOI present), within max_pixels
    and the resize limit; for a decoder that `rotates_by_exif` (torchcodec), without an
    EXIF orientation other than 1 (the CPU path does not rotate). Every other row goes
    to the CPU decoder, which gives it the same pixels or the same error as a CPU pool."""
    header = jpeg_header(view, start, end)
    if header is None:
        return 0
    width, height, components, sof, adobe, orientation = header
    if sof not in _DEVICE_SOF or components not in (1, 3) or (components == 3 and adobe == 0):
        return 0
    if rotates_by_exif and orientation not in (None, 1):
        return 0
    if width == 0 or height == 0 or width * height > preprocess.max_pixels:
        return 0
    try:
        _check_resized_size((width, height), preprocess)
    except DecodeError:
        return 0
    return width * height if has_eoi(view, start, end) else 0


def device_decodable(view, start: int, end: int, preprocess: Preprocess) -> bool:
    """True when the device decoder may take this row (see device_decodable_pixels)."""
    return device_decodable_pixels(view, start, end, preprocess) > 0
