"""DICOM test files made with pydicom: a digital X-ray dataset around any pixel
array, with the attributes a test wants (rescale, window, VOI LUT, ...)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def dicom_dataset(sop_class: str = DX_FOR_PRESENTATION, modality: str = "DX") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Phantom", "0001"
    return ds


def dicom_bytes(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                **attributes) -> bytes:
    """A DICOM Part 10 file of ``pixels`` (``(H, W)``, ``(H, W, 3)`` or ``(frames, H, W)``);
    ``pixels=None`` makes a non-image object (a text report)."""
    ds = dicom_dataset() if pixels is not None else dicom_dataset(BASIC_TEXT_SR, "SR")
    if pixels is not None:
        bits = bits_stored or pixels.dtype.itemsize * 8
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for key, value in attributes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def xray_dicom(jpeg: str | Path) -> bytes:
    """A real X-ray as a viewer-ready DICOM: 12-bit, MONOCHROME1 (inverted) and a
    LINEAR_EXACT window whose display output reproduces the JPEG's gray levels."""
    gray = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16)
    stored = (255 - gray) * 16  # 0..4080 in 12 bits, bright bone stored low
    return dicom_bytes(stored, "MONOCHROME1", bits_stored=12, WindowCenter=2040, WindowWidth=4080,
                       VOILUTFunction="LINEAR_EXACT")
