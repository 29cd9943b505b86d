"""Models shipped inside the package: a name (``--model retinopathy``) -> its checkpoint file here.

Adding one is one entry in :data:`SHIPPED` and its file (see the model cards: MODEL_CARD.md,
RETINOPATHY_MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
# name -> asset file; the first is the default, used when no model is given
SHIPPED: dict[str, str] = {
    "pneumonia": "pneumonia.pt",  # pediatric chest X-ray, NORMAL vs PNEUMONIA (MODEL_CARD.md)
    "retinopathy": "retinopathy.pt",  # fundus photograph, 5 diabetic retinopathy grades (RETINOPATHY_MODEL_CARD.md)
}
DEFAULT_MODEL = next(iter(SHIPPED))


def shipped_model(name: str = DEFAULT_MODEL) -> Path:
    """The packaged model called ``name`` (default: the chest X-ray one)."""
    from medcls.models.checkpoint import CheckpointError

    if name not in SHIPPED:
        raise CheckpointError(f"no shipped model called '{name}' (shipped: {', '.join(SHIPPED)})")
    path = HERE / SHIPPED[name]
    if not path.is_file():
        raise CheckpointError(f"the shipped model '{name}' is missing from this installation ({path}); "
                              "pass --model CHECKPOINT")
    return path


def resolve_model(model: str | Path | None) -> Path:
    """What ``--model`` names: None -> the default shipped model; a shipped model's name
    (``retinopathy``) -> its file, even beside a folder of that name (write ``./retinopathy`` for
    the folder); anything else -> the checkpoint, run folder or ONNX file at that path."""
    if model is None:
        return shipped_model()
    if isinstance(model, str) and model in SHIPPED:
        return shipped_model(model)
    return Path(model)
