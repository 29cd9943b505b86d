import io
import json

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_files import dicom_bytes, xray_dicom
from medcls.cli import main
from medcls.data.images import ImageLoadError, is_dicom, load_image, open_image
from medcls.inference.predictor import Predictor

RAMP = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095: every 12-bit value once


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(open_image(data), dtype=np.int64)


def test_twelve_bit_values_use_the_full_gray_range():
    img = open_image(dicom_bytes(RAMP, bits_stored=12))
    assert img.mode == "L" and img.size == (64, 64)
    out = np.asarray(img, dtype=np.int64)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel()) >= 0)  # monotonic, no wrap-around at 8 bits
    assert abs(out.ravel()[2048] - 128) <= 1


def test_rescale_slope_and_intercept_apply_before_the_window():
    # Stored s -> value 0.5 s - 100; the window (in values) is 300..500.
    data = dicom_bytes(RAMP, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-100,
                       WindowCenter=400, WindowWidth=200, VOILUTFunction="LINEAR_EXACT")
    out = pixels(data).ravel()
    assert out[500] == 0 and out[1500] == 255  # values 150 and 650: outside the window
    assert abs(out[1000] - 128) <= 1  # value 400: the window centre
    unscaled = pixels(dicom_bytes(RAMP, bits_stored=12, WindowCenter=400, WindowWidth=200,
                                  VOILUTFunction="LINEAR_EXACT")).ravel()
    assert unscaled[1000] == 255  # ignoring the rescale would put stored 1000 above the window


def test_signed_sixteen_bit_ct_values():
    hu = (RAMP.astype(np.int32) - 1024).astype(np.int16)  # -1024..3071 stored as signed
    out = pixels(dicom_bytes(hu, bits_stored=16, WindowCenter=40, WindowWidth=400,
                             VOILUTFunction="LINEAR_EXACT")).ravel()
    assert out[1024 - 200] == 0 and out[1024 + 300] == 255  # -200 and 300 HU: outside the window
    assert abs(out[1024 + 40] - 128) <= 1


def test_voi_lut_sequence_is_applied():
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new("LUTData", "US", np.round(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tolist())
    out = pixels(dicom_bytes(RAMP, bits_stored=12, VOILUTSequence=Sequence([lut]))).ravel()
    assert out[0] == 0 and out[4095] == 255
    assert abs(out[1024] - round(np.sqrt(1024 / 4095) * 255)) <= 1  # the square-root curve, not linear


def test_monochrome1_is_inverted():
    normal = pixels(dicom_bytes(RAMP, "MONOCHROME2", bits_stored=12))
    inverted = pixels(dicom_bytes(RAMP, "MONOCHROME1", bits_stored=12))
    assert np.array_equal(inverted, 255 - normal)


def test_rgb_dicom():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    img = open_image(dicom_bytes(rgb, "RGB", PlanarConfiguration=0))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)


@pytest.mark.parametrize("data, message", [
    (dicom_bytes(np.zeros((3, 16, 16), np.uint16), bits_stored=12), "multi-frame DICOM (3 frames) is not supported"),
    (dicom_bytes(None), "no pixel data (a non-image SR object)"),
    (dicom_bytes(RAMP, bits_stored=12)[:-1000], "DICOM pixel data cannot be decoded"),
    (dicom_bytes(RAMP)[:132] + b"\x08\x00\x05\x00garbage" * 20, "corrupt DICOM file"),
])
def test_bad_dicom_is_refused_with_a_reason(data, message):
    assert is_dicom(data)
    with pytest.raises(ImageLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image(data)


def test_real_xray_as_dicom_predicts_like_the_same_pixels(xray_root, trained_run, tmp_path):
    jpeg = xray_root / "test" / "PNEUMONIA" / "person1_virus_6.jpeg"
    dcm = tmp_path / "person1_virus_6.dcm"
    dcm.write_bytes(xray_dicom(jpeg))
    gray = load_image(jpeg)[:, :, 0]
    assert np.array_equal(load_image(dcm)[:, :, 0], gray)  # full size: the very same gray levels
    out = tmp_path / "pred.json"
    assert main(["predict", str(tmp_path), "--model", str(trained_run), "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())
    png = io.BytesIO()
    Image.fromarray(gray).save(png, "PNG")
    [want], _ = Predictor.from_checkpoint(trained_run).predict([png.getvalue()])
    assert row["path"].endswith(".dcm") and row["prediction"] == want.prediction
    assert row["p_PNEUMONIA"] == pytest.approx(want.probabilities["PNEUMONIA"], abs=1e-6)
