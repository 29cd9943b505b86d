"""DICOM images (pydicom) as 8-bit pictures: the stored values go through the
modality transform (rescale slope/intercept or modality LUT) and the VOI
transform (VOI LUT or window centre/width) a viewer would apply, MONOCHROME1
is inverted so that bone is bright, and colour images come out as RGB.
Multi-frame and non-image DICOM files are refused with a clear reason.
:func:`medcls.data.images.open_image` calls :func:`read_dicom` for DICOM bytes."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from medcls.core.messages import first_line
from medcls.data.decoding import MAX_PIXELS, ImageLoadError

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")


def _unit_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(arr.shape)


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The output range of the VOI transform (pydicom prefers the VOI LUT over the window)."""
    if ds.get("VOILUTSequence"):
        entries, first_mapped, _ = ds.VOILUTSequence[0].LUTDescriptor
        domain = np.array([first_mapped, first_mapped + (entries or 2**16) - 1])
    else:
        domain = np.array([-1e12, 1e12])  # below and above any window
    with np.errstate(over="ignore"):
        ends = apply_voi_lut(domain, ds).astype(np.float64)
    return float(ends.min()), float(ends.max())


def _grayscale(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values -> display values in [0, 1] (0 black), as a viewer shows them."""
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence") or "WindowCenter" in ds:
        if ds.get("VOILUTSequence"):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by whole numbers
        unit = _unit_range(apply_voi_lut(values, ds).astype(np.float64), *_voi_range(ds))
    else:
        unit = _unit_range(values.astype(np.float64), float(values.min()), float(values.max()))
    return 1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


def _colour(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """RGB values in [0, 1]; pydicom has already converted YBR to RGB."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        depth = 8 if pixels.dtype == np.uint8 else 16
    else:
        depth = int(ds.BitsStored)
    return pixels.astype(np.float64) / (2**depth - 1)


def read_dicom(data: bytes, name: str) -> Image.Image:
    """Decode DICOM Part 10 bytes into an 8-bit ``L`` (monochrome) or ``RGB`` image."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001  pydicom raises many types for damaged headers
        raise ImageLoadError(name, f"corrupt DICOM file ({first_line(exc)})") from None
    if "PixelData" not in ds:
        what = f"a non-image {ds.Modality} object" if ds.get("Modality") else "truncated, or not an image"
        raise ImageLoadError(name, f"DICOM file has no pixel data ({what})")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageLoadError(name, f"multi-frame DICOM ({frames} frames) is not supported; send one frame per file")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in MONOCHROME + COLOUR:
        raise ImageLoadError(name, f"DICOM photometric interpretation {photometric or '(missing)'} is not supported")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * cols > MAX_PIXELS:
        raise ImageLoadError(name, f"{cols}x{rows} pixels is over the limit of {MAX_PIXELS:,}")
    try:
        pixels = ds.pixel_array
        unit = _grayscale(ds, pixels) if photometric in MONOCHROME else _colour(ds, pixels)
    except Exception as exc:  # noqa: BLE001  decoders and LUTs fail with many types on bad data
        raise ImageLoadError(name, f"DICOM pixel data cannot be decoded ({first_line(exc)})") from None
    expected = 2 if photometric in MONOCHROME else 3
    if unit.ndim != expected:
        raise ImageLoadError(name, f"DICOM pixel data has shape {unit.shape}, not one {photometric} frame")
    return Image.fromarray((unit * 255.0).round().astype(np.uint8))  # 2-D -> L, (H, W, 3) -> RGB
