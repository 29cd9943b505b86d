"""One-line messages from foreign exceptions: libraries (Pillow, pydicom, torch, ONNX
Runtime, ...) raise multi-line or empty errors; users get one line naming the cause."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
