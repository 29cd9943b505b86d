import io

import numpy as np
import pytest
from PIL import Image

from medcls.data.images import MAX_PIXELS, ImageLoadError, load_image


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3)])
def test_any_mode_converts(mode, color_mode, channels):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8), "RGB")
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        (rng.random((37, 53)) * 4000).astype(np.uint16 if mode == "I;16" else np.int32 if mode == "I" else np.float32))
    fmt = "TIFF" if mode in ("F", "I", "CMYK") else "PNG"
    arr = load_image(_png(img, fmt), color_mode, 32)
    assert arr.shape == (32, 32, channels) and arr.dtype == np.uint8


def test_sixteen_bit_uses_full_range():
    ramp = (np.linspace(0, 4095, 64 * 64).reshape(64, 64)).astype(np.uint16)  # 12-bit data in 16-bit PNG
    arr = load_image(_png(Image.fromarray(ramp)), "grayscale")
    assert arr.min() == 0 and arr.max() == 255


def test_exif_orientation_is_applied():
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    arr = load_image(_png(img, "JPEG", exif=exif.tobytes()), "grayscale")
    assert arr.shape[:2] == (40, 20)  # height and width swapped
    assert arr[:10].mean() > 200  # the band is now at the top


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "not an image"),
])
def test_bad_bytes_give_clear_errors(data, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_image(data)


def test_truncated_jpeg(tmp_path):
    good = _png(Image.new("RGB", (200, 200), (90, 10, 30)), "JPEG")
    path = tmp_path / "cut.jpeg"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpeg.*(corrupt|truncated)"):
        load_image(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png: file not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_refused():
    side = int(MAX_PIXELS ** 0.5) + 10
    bomb = _png(Image.new("1", (side, side)))  # tiny file, huge image
    with pytest.raises(ImageLoadError, match="over the limit|decompression bomb"):
        load_image(bomb)
