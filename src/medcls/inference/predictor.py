"""Prediction on image files with a saved model: the :class:`Predictor` (all
preprocessing, calibrated probabilities and the stored threshold; a PyTorch
checkpoint or an exported ONNX file behind one interface) and the stable output
table (``path``, ``prediction``, one ``p_<CLASS>`` per class, then ``ood_score`` and
``in_distribution``: whether the image looks like the training data)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from medcls.core.io import atomic_write_text, check_writable
from medcls.core.progress import PROGRESS_MIN_ITEMS, track
from medcls.data.images import IMAGE_SUFFIXES, ImageLoadError, Source, expand_paths, load_image
from medcls.inference.backend import Backend
from medcls.inference.onnx_backend import load_onnx
from medcls.inference.torch_backend import TorchBackend
from medcls.metrics.ordinal import grade_decision
from medcls.models.checkpoint import CheckpointError, ModelInfo, load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.ood.detector import OODDetector, feature_grid, ood_columns

# The output table's formats, by the suffix of the file asked for.
OUTPUT_FORMATS = {".csv": "csv", ".json": "json"}


class PredictError(ValueError):
    """Nothing to predict, or an output file of a format medcls does not write."""


def output_format(out: str | Path) -> str:
    """``csv`` or ``json``, by ``out``'s suffix; any other suffix is refused (rather than written as CSV)."""
    fmt = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise PredictError(f"cannot write predictions to {out}: the file name must end in "
                           f"{' or '.join(OUTPUT_FORMATS)}")
    return fmt


def decide(probs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Class indices: binary models compare p(positive) with the stored threshold; graded models with
    cut-points cut the expected grade; others take the argmax."""
    if info.binary:
        return (probs[:, 1] >= info.threshold).astype(int)
    if info.cutpoints:
        return grade_decision(probs, info.cutpoints)
    return probs.argmax(axis=1)


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: a row of the stable table (see :meth:`row`)."""

    path: str
    prediction: str
    probabilities: dict[str, float]
    ood_score: Optional[float] = None  # None for a model without an OOD detector
    in_distribution: Optional[bool] = None

    def row(self) -> dict[str, Any]:
        """The stable table's columns: ``path``, ``prediction``, ``p_<CLASS>``..., ``ood_score``,
        ``in_distribution``."""
        return {"path": self.path, "prediction": self.prediction,
                **{f"p_{c}": p for c, p in self.probabilities.items()},
                "ood_score": self.ood_score, "in_distribution": self.in_distribution}


def prediction_rows(names: Sequence[str], probs: np.ndarray, info: ModelInfo,
                    ood_scores: np.ndarray | None = None) -> list[Prediction]:
    """One :class:`Prediction` per name, decided by the model's rule (threshold or argmax)."""
    labels = decide(probs, info)
    return [Prediction(name, info.classes[k], {c: round(float(p), 6) for c, p in zip(info.classes, row)}, **ood)
            for name, k, row, ood in zip(names, labels, probs, ood_columns(ood_scores, info, len(names)))]


class Predictor:
    """A loaded model that turns images (paths or bytes) into calibrated predictions.

    ``model`` is a PyTorch network or a :class:`~medcls.inference.backend.Backend` (e.g.
    :class:`~medcls.inference.onnx_backend.OnnxBackend`); :meth:`load` picks by file suffix.
    """

    def __init__(self, model: torch.nn.Module | Backend, info: ModelInfo, batch_size: int = 32):
        self.backend: Backend = (TorchBackend(model, info.image_size, info.in_channels, batch_size, info.tta,
                                              feature_grid(info))
                                 if isinstance(model, torch.nn.Module) else model)
        self.net = getattr(self.backend, "net", None)  # the PyTorch network; None for ONNX
        self.info, self.batch_size = info, batch_size
        self.ood = OODDetector.from_info(info)
        if self.ood is not None and self.net is None and self.backend.feature_width != sum(self.ood.blocks):
            self.ood = None  # an ONNX file exported before its graph carried the detector's features

    @classmethod
    def from_checkpoint(cls, path: str | Path, batch_size: int = 32, compile: bool = False,
                        threads: int | None = None) -> "Predictor":
        """A checkpoint on PyTorch; ``compile``: through :class:`~medcls.inference.compiled_backend.CompiledBackend`
        (bf16, TorchInductor; ``threads`` torch threads per run, None: torch's choice)."""
        net, info = load_checkpoint(path)
        if compile:
            from medcls.inference.compiled_backend import CompiledBackend

            return cls(CompiledBackend(net, info, batch_size, threads), info, batch_size)
        return cls(net, info, batch_size)

    @classmethod
    def from_onnx(cls, path: str | Path, batch_size: int = 32, threads: int | None = None) -> "Predictor":
        backend, info = load_onnx(path, batch_size, threads)
        return cls(backend, info, batch_size)

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, compile: bool = False, **kwargs) -> "Predictor":
        """An exported ``.onnx`` file runs on ONNX Runtime (``threads`` threads per run; None:
        all cores); a checkpoint or run folder on PyTorch, compiled if ``compile``."""
        if Path(path).suffix.lower() == ".onnx":
            if compile:
                raise CheckpointError(f"{path}: compiling applies to PyTorch checkpoints, not to ONNX files")
            return cls.from_onnx(path, threads=threads, **kwargs)
        return cls.from_checkpoint(path, compile=compile, threads=threads if compile else None, **kwargs)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def preprocess(self, source: Source) -> np.ndarray:
        """One image -> uint8 ``(H, W, C)`` at the model's size and colour mode."""
        return load_image(source, self.info.color_mode, self.info.image_size)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.backend.logits(images)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``(N, K)`` for preprocessed uint8 images."""
        return logits_to_probs(self.logits(images), self.info.temperature)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and OOD scores (None without a detector) of preprocessed uint8 images."""
        if self.ood is None:
            return self.logits(images), None
        logits, features = self.backend.outputs(images)
        return logits, self.ood.score(features, logits)

    def predict_rows(self, images: np.ndarray, names: Sequence[str]) -> list[Prediction]:
        """Predictions for preprocessed uint8 images."""
        logits, ood_scores = self.outputs(images)
        return prediction_rows(names, logits_to_probs(logits, self.info.temperature), self.info, ood_scores)

    def predict(self, sources: Iterable[Source], names: Sequence[str] | None = None
                ) -> tuple[list[Prediction], dict[str, str]]:
        """Predict each source; returns (predictions, {name: error}) for those that could not be read."""
        sources = list(sources)
        names = list(names) if names is not None else [str(s) for s in sources]
        arrays, kept, errors = [], [], {}
        n = len(sources)
        for name, source in track(zip(names, sources), f"reading {n} images", n, enabled=n >= PROGRESS_MIN_ITEMS):
            try:
                arrays.append(self.preprocess(source))
                kept.append(name)
            except ImageLoadError as exc:
                errors[name] = exc.reason
        if not arrays:
            return [], errors
        return self.predict_rows(np.stack(arrays), kept), errors


def predictions_text(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """Table rows (e.g. :meth:`Prediction.row`) as ``csv`` or ``json`` text."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_predictions(predictions: Sequence[Prediction], out: str | Path,
                      labels: Sequence[str] | None = None) -> Path:
    """Write the table as CSV or JSON (by the file's suffix); ``labels``: a true-label column."""
    out = Path(out)
    rows = [p.row() for p in predictions]
    if labels is not None:
        rows = [{**row, "label": label} for row, label in zip(rows, labels)]
    atomic_write_text(out, predictions_text(rows, output_format(out)))
    return out


def predict_files(paths: Iterable[str | Path], model: str | Path | None = None, out: str | Path | None = None,
                  compile: bool = False) -> tuple[list[Prediction], dict[str, str]]:
    """Predict image files and folders with ``model`` (checkpoint, ONNX, or a shipped model's name;
    default: the shipped chest X-ray model; ``compile``: bf16 TorchInductor, for many images);
    optionally write ``out``."""
    from medcls.assets import resolve_model

    paths = list(paths)
    files = expand_paths(paths)
    if not files:
        raise PredictError(f"no images found in {', '.join(map(str, paths))} "
                           f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    if out is not None:  # before the work, which a refused file would lose
        output_format(out)
        check_writable(out)
    predictor = Predictor.load(resolve_model(model), compile=compile)
    rows, errors = predictor.predict(files)
    if out is not None and rows:  # no rows: no table (not even its header) to write
        write_predictions(rows, out)
    return rows, errors
