"""How decoding an input can fail: the pixel budget and the error that names the file."""

from __future__ import annotations

# Above this many pixels an image is refused (a "decompression bomb"): 200 MP
# is far above any chest X-ray (about 3000 x 3000) or fundus photograph.
MAX_PIXELS = 200_000_000


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message names it and says why."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")
