"""Prediction on image files with a saved model: the :class:`Predictor` (all
preprocessing, calibrated probabilities and the stored threshold; a PyTorch
checkpoint or an exported ONNX file behind one interface) and the stable output
table (``path``, ``prediction``, one ``p_<CLASS>`` per class, then ``ood_score`` and
``in_distribution``: whether the image looks like the training data)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from medcls.allocator import reuse_freed_memory
from medcls.checkpoint import CheckpointError, ModelInfo, load_checkpoint
from medcls.data.images import IMAGE_SUFFIXES, ImageLoadError, Source, load_image
from medcls.evaluation.ood import OODDetector, OODFeatures, logits_and_features, ood_columns
from medcls.io import atomic_write_text
from medcls.models.inference import batch_logits, logits_to_probs
from medcls.onnx_model import OnnxBackend, load_onnx


def decide(probs: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Class indices: binary models compare p(positive) with the stored threshold."""
    if info.binary:
        return (probs[:, 1] >= info.threshold).astype(int)
    return probs.argmax(axis=1)


def prediction_rows(names: Sequence[str], probs: np.ndarray, info: ModelInfo,
                    ood_scores: np.ndarray | None = None) -> list[dict]:
    """The stable table: ``path``, ``prediction``, then ``p_<CLASS>`` for each class, then
    ``ood_score`` and ``in_distribution`` (None for a model without an OOD detector)."""
    labels = decide(probs, info)
    return [{"path": name, "prediction": info.classes[k],
             **{f"p_{c}": round(float(p), 6) for c, p in zip(info.classes, row)}, **ood}
            for name, k, row, ood in zip(names, labels, probs, ood_columns(ood_scores, info, len(names)))]


class TorchBackend:
    """Runs a PyTorch network on uint8 images, in batches."""

    name = "pytorch"

    def __init__(self, net: torch.nn.Module, batch_size: int = 32, tta: bool = False):
        self.net, self.batch_size, self.tta = net.eval(), batch_size, tta

    def logits(self, images: np.ndarray) -> np.ndarray:
        return batch_logits(self.net, images, self.batch_size, tta=self.tta)


class Predictor:
    """A loaded model that turns images (paths or bytes) into calibrated predictions.

    ``model`` is a PyTorch network or a backend with ``.logits(images)`` (e.g.
    :class:`~medcls.onnx_model.OnnxBackend`); :meth:`load` picks by file suffix.
    """

    def __init__(self, model: torch.nn.Module | OnnxBackend, info: ModelInfo, batch_size: int = 32):
        self.backend = (TorchBackend(model, batch_size, info.tta) if isinstance(model, torch.nn.Module) else model)
        self.net = getattr(self.backend, "net", None)  # the PyTorch network; None for ONNX
        if not isinstance(self.backend, OnnxBackend):
            reuse_freed_memory()  # PyTorch allocates each batch's activations anew (ONNX Runtime has an arena)
        self.info, self.batch_size = info, batch_size
        self.ood = OODDetector.from_info(info)
        if self.ood is not None and self.net is None and getattr(self.backend, "feature_width", None) != sum(
                self.ood.blocks):
            self.ood = None  # an ONNX file exported before its graph carried the detector's features
        self._features = OODFeatures(self.net, info.image_size, info.in_channels) if self.ood and self.net else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, batch_size: int = 32, compile: bool = False,
                        threads: int | None = None) -> "Predictor":
        """A checkpoint on PyTorch; ``compile``: through :class:`~medcls.compiled_model.CompiledBackend`
        (bf16, TorchInductor; ``threads`` torch threads per run, None: torch's choice)."""
        net, info = load_checkpoint(path)
        if compile:
            from medcls.compiled_model import CompiledBackend

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
        # One pass gives both; with TTA the logits are the averaged ones (in the ONNX graph too).
        if self._features is None:
            logits, features = self.backend.outputs(images)
        else:
            logits, features = logits_and_features(self._features, images, self.batch_size, tta=self.info.tta)
        return logits, self.ood.score(features, logits)

    def predict_rows(self, images: np.ndarray, names: Sequence[str]) -> list[dict]:
        """Prediction rows (the stable table) for preprocessed uint8 images."""
        logits, ood_scores = self.outputs(images)
        return prediction_rows(names, logits_to_probs(logits, self.info.temperature), self.info, ood_scores)

    def predict(self, sources: Iterable[Source], names: Sequence[str] | None = None
                ) -> tuple[list[dict], dict[str, str]]:
        """Predict each source; returns (rows, {name: error}) for those that could not be read."""
        sources = list(sources)
        names = list(names) if names is not None else [str(s) for s in sources]
        arrays, kept, errors = [], [], {}
        for name, source in zip(names, sources):
            try:
                arrays.append(self.preprocess(source))
                kept.append(name)
            except ImageLoadError as exc:
                errors[name] = exc.reason
        if not arrays:
            return [], errors
        return self.predict_rows(np.stack(arrays), kept), errors


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def predictions_text(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """Write rows as CSV or JSON (by the file's suffix)."""
    out = Path(out)
    fmt = "json" if out.suffix.lower() == ".json" else "csv"
    atomic_write_text(out, predictions_text(rows, fmt))
    return out


def predict_files(paths: Iterable[str | Path], model: str | Path | None = None, out: str | Path | None = None,
                  compile: bool = False) -> tuple[list[dict], dict[str, str]]:
    """Predict image files and folders with ``model`` (checkpoint or ONNX; default: the
    shipped model; ``compile``: bf16 TorchInductor, for many images); optionally write ``out``."""
    from medcls.assets import shipped_model

    predictor = Predictor.load(model or shipped_model(), compile=compile)
    files = expand_paths(paths)
    rows, errors = predictor.predict(files)
    if out is not None:
        write_predictions(rows, out)
    return rows, errors
