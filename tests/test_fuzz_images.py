"""Property tests of the one place pixels enter medcls: whatever bytes arrive (any
size, mode, bit depth and format, truncated, damaged or random), ``load_image``
returns a uint8 array of the requested shape or raises ``ImageLoadError``; and
of the preprocessing after it: any uint8 batch becomes finite model input in [0, 1]."""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from medcls.config import AugmentConfig
from medcls.data.augment import BatchAugment
from medcls.data.images import ImageLoadError, load_image
from medcls.data.prepared import to_model_input

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL notes damaged metadata

# A modest budget keeps the suite fast; the strategies are broad instead.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# mode -> formats that can store it
FORMATS = {
    "1": ["PNG", "TIFF", "BMP", "GIF"], "L": ["PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF"],
    "P": ["PNG", "TIFF", "BMP", "GIF"], "RGB": ["PNG", "JPEG", "TIFF", "BMP", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"], "LA": ["PNG", "TIFF"], "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"], "I;16B": ["TIFF"], "I": ["TIFF"], "F": ["TIFF"],
    "PA": ["TIFF"], "YCbCr": ["JPEG", "TIFF"], "LAB": ["TIFF"],
}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a", b"RIFF",
         b"\x00" * 128 + b"DICM"]


def _pixels(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B", "I", "F"):
        dtype = {"I": np.int32, "F": np.float32}.get(mode, np.uint16)
        top = {"I": 1 << 20, "F": 1e6}.get(mode, 65535)
        arr = (rng.random((h, w)) * top).astype(dtype)
        if rng.random() < 0.2:
            arr[:] = arr.flat[0]  # a constant image (zero range when stretched to 8 bit)
        img = Image.fromarray(arr)
        return img.convert(mode) if mode == "I;16B" else img
    return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)


@st.composite
def encoded_images(draw) -> tuple[bytes, bool]:
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    w, h = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    buf = io.BytesIO()
    _pixels(mode, w, h, draw(st.integers(0, 2**16))).save(buf, format=fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data, damage == "none"


def _check(data: bytes, color_mode: str, size: int | None, must_load: bool = False) -> None:
    try:
        arr = load_image(data, color_mode, size)
    except ImageLoadError as exc:
        assert not must_load, f"an intact image was refused: {exc}"
        assert exc.reason and str(exc).startswith("cannot read image <bytes>:")
        return
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3
    assert arr.shape[2] == (1 if color_mode == "grayscale" else 3)
    if size is not None:
        assert arr.shape[:2] == (size, size)


# Found by the fuzzer: a TIFF whose strip-offset tag became a RATIONAL; Pillow raises TypeError.
BAD_TIFF_TAG_TYPE = (b"MM\x00*\x00\x00\x00\x08\x00\t\x01\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x01\x01\x01"
                     b"\x00\x04\x00\x00\x00\x01\x00\x00\x00\x04\x01\x02\x00\x03\x00\x00\x00\x01\x00\x10\x00\x00"
                     b"\x01\x03\x00\x03\x00\x00\x00\x01\x00\x01\x00\x00\x01\x06\x00\x03\x00\x00\x00\x01\x00\x01"
                     b"\x00\x00\x01\x11\x00\x05\x00\x00\x00\x01\x00\x00\x00z\x01\x16\x00\x04\x00\x00\x00\x01\x00"
                     b"\x00\x00\x04\x01\x17\x00\x04\x00\x00\x00\x01\x00\x00\x00\x08\x01\x1c\x00\x03\x00\x00\x00\x01"
                     b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\xff\x00\xff\x00\xff\x00\xff")


@FUZZ
@given(encoded_images(), st.sampled_from(["grayscale", "rgb"]), st.one_of(st.none(), st.integers(1, 96)))
@example((BAD_TIFF_TAG_TYPE, False), "grayscale", None)
def test_any_image_loads_or_fails_cleanly(image, color_mode, size):
    data, intact = image
    _check(data, color_mode, size, must_load=intact)


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=600), st.sampled_from(["grayscale", "rgb"]),
       st.one_of(st.none(), st.integers(1, 64)))
def test_random_bytes_never_crash(magic, tail, color_mode, size):
    _check(magic + tail, color_mode, size)


@pytest.mark.parametrize("mode", sorted(FORMATS))
def test_every_truncation_point_of_a_png_or_tiff(mode):
    """Exhaustive over cut points for one small image per mode: none crash."""
    fmt = "PNG" if "PNG" in FORMATS[mode] else "TIFF"
    buf = io.BytesIO()
    _pixels(mode, 9, 7, 0).save(buf, format=fmt)
    data = buf.getvalue()
    for cut in range(0, len(data), max(1, len(data) // 40)):
        _check(data[:cut], "rgb", 16)


@FUZZ
@given(st.integers(1, 4), st.integers(1, 40), st.sampled_from([1, 3]), st.integers(0, 2**16),
       st.builds(AugmentConfig, rotation=st.floats(0, 180), shift=st.floats(0, 0.9), zoom=st.floats(0, 0.9),
                 brightness=st.floats(0, 1), contrast=st.floats(0, 1), hflip=st.booleans()))
def test_any_batch_becomes_finite_model_input(n, side, channels, seed, augment_cfg):
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, side, side, channels), dtype=np.uint8))
    for augment in (BatchAugment(augment_cfg).train(), BatchAugment(augment_cfg).eval()):
        x = augment(to_model_input(images))
        assert x.shape == (n, channels, side, side) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
