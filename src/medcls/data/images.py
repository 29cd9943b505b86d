"""Reading one image of any size, mode and bit depth into a uint8 array of the
chosen colour mode and size. This is the only place pixels enter medcls."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medcls.data.decoding import MAX_PIXELS, ImageLoadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
COLOR_MODES = ("grayscale", "rgb")

Source = Union[str, Path, bytes]

# Above this many pixels, an image wanted small is first shrunk by a whole factor (Pillow's
# reduce, a box filter) right after decoding, so that mode conversions and the resize work on a
# small copy: a 78 KB 9000 x 9000 PNG cost 0.6-0.8 GB per decode without it. Real scans (chest
# X-rays up to ~9 MP, fundus photographs up to ~15 MP) stay below it and decode as before.
SHRINK_ABOVE = 25_000_000
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr", "PA"}  # modes Image.reduce takes


def channels(color_mode: str) -> int:
    if color_mode not in COLOR_MODES:
        raise ValueError(f"colour mode must be one of {', '.join(COLOR_MODES)}, got {color_mode!r}")
    return 1 if color_mode == "grayscale" else 3


def _name(source: Source) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)


def _read_bytes(source: Source) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(str(source), "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(str(source), "is a folder, not a file") from None
    except OSError as exc:
        raise ImageLoadError(str(source), exc.strerror or str(exc)) from None


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _to_8bit(img: Image.Image) -> Image.Image:
    """High bit-depth and float images are stretched to 0..255 by their own range."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), mode="L")


def _normalise_mode(img: Image.Image, color_mode: str) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black, the background of a radiograph.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, P, 1, ...
    return img.convert("L" if color_mode == "grayscale" else "RGB")


def image_pixels(data: bytes) -> int | None:
    """Width x height read from an image's header, nothing decoded; None for DICOM and for bytes
    Pillow cannot open (decoding them gives the error that names the problem)."""
    if is_dicom(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, Image.DecompressionBombError):
        return None


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """``img`` reduced by the largest whole factor that keeps both sides at least ``2 * size``,
    if it is over :data:`SHRINK_ABOVE` pixels."""
    factor = min(img.width, img.height) // (2 * size)
    if img.width * img.height <= SHRINK_ABOVE or factor < 2 or img.mode not in _REDUCIBLE:
        return img
    return img.reduce(factor)


def open_image(source: Source, draft: tuple[str, int] | None = None) -> Image.Image:
    """Open and fully decode an image (PIL formats or DICOM), EXIF orientation applied.

    ``draft=(mode, size)``: only an image of about ``size`` px is wanted. JPEG then decodes
    at a reduced scale (several times faster on large originals), and any image over
    :data:`SHRINK_ABOVE` pixels is reduced right after decoding (memory).
    """
    name = _name(source)
    data = _read_bytes(source)
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    if is_dicom(data):
        try:
            from medcls.data.dicom import (
                read_dicom,  # loads pydicom only when a DICOM file comes
            )
        except ImportError:
            raise ImageLoadError(name, "is DICOM, but pydicom is not installed (pip install pydicom)") from None
        return read_dicom(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageLoadError(name, f"{img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,}")
            if draft is not None and img.format == "JPEG":
                img.draft(draft[0], (draft[1], draft[1]))
            img.load()
        if draft is not None:
            img = _shrink(img, draft[1])
        return ImageOps.exif_transpose(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(name, "image is too large (decompression bomb)") from None
    # TypeError: Pillow's TIFF reader meets a tag of the wrong type (e.g. a rational strip offset)
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from None


def _decoded(source: Source, color_mode: str, size: int | None) -> Image.Image:
    """``source`` decoded in ``color_mode``; ``size``: only about that many px are wanted (see :func:`open_image`)."""
    channels(color_mode)
    draft = ("L" if color_mode == "grayscale" else "RGB", size) if size else None
    return _normalise_mode(open_image(source, draft), color_mode)


def _array(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_image(source: Source, color_mode: str = "grayscale", size: int | None = None) -> np.ndarray:
    """Read ``source`` as a uint8 array ``(H, W, C)`` in ``color_mode``, resized to ``size`` x ``size``.

    Resizing ignores the aspect ratio (as Keras' ``image_dataset_from_directory``
    does), with bilinear interpolation and antialiasing.
    """
    img = _decoded(source, color_mode, size)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return _array(img)


def load_thumbnail(source: Source, color_mode: str = "rgb", max_side: int = 512) -> np.ndarray:
    """Read ``source`` as a uint8 array ``(H, W, C)`` of at most ``max_side`` px on its longer side,
    aspect kept (for showing an image: a large original is never converted at full size)."""
    img = _decoded(source, color_mode, max_side)
    img.thumbnail((max_side, max_side))
    return _array(img)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out
