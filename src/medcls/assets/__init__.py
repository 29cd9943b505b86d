"""Models shipped inside the package."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODEL = Path(__file__).with_name("pneumonia.pt")


def shipped_model() -> Path:
    """The packaged chest X-ray model (see MODEL_CARD.md), used when no model is given."""
    from medcls.models.checkpoint import CheckpointError

    if not SHIPPED_MODEL.is_file():
        raise CheckpointError("no model given and no shipped model in this installation; pass --model CHECKPOINT")
    return SHIPPED_MODEL
