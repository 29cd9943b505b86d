"""An exported ONNX model file run with ONNX Runtime. The file is self-contained:
its graph takes uint8 ``(N, H, W, C)`` images and returns ``logits`` and the
``features`` of :class:`~medcls.ood.detector.OODFeatures`; its :class:`ModelInfo` (classes, threshold,
temperature, size, colour mode, ...) is JSON in the metadata under ``medcls``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from medcls.core.messages import first_line
from medcls.core.progress import batch_starts
from medcls.inference.backend import parallel_runs
from medcls.models.checkpoint import CheckpointError, ModelInfo, upgrade_info

METADATA_KEY = "medcls"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features")


def info_metadata(info: ModelInfo) -> dict[str, str]:
    """The ONNX ``metadata_props`` entries that make an exported file self-contained."""
    from medcls.core.version import __version__

    # Tensors (the OOD detector's state) are stored as nested lists.
    return {METADATA_KEY: json.dumps({"medcls_version": __version__, "info": dataclasses.asdict(info)},
                                     default=lambda o: o.tolist())}


class OnnxBackend:
    """Runs an ONNX Runtime session on uint8 images, in batches."""

    name = "onnxruntime"

    def __init__(self, session, batch_size: int = 32, threads: int | None = None):
        self.session, self.batch_size = session, batch_size
        self.parallel_runs = parallel_runs(threads)
        width = session.get_outputs()[1].shape[1]
        self.feature_width = width if isinstance(width, int) else None  # None: not fixed in the graph

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, outputs)`` and features ``(N, D)`` of uint8 images ``(N, H, W, C)``."""
        parts = [self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images[i:i + self.batch_size])})
                 for i in batch_starts(len(images), self.batch_size)]
        if not parts:
            return np.zeros((0, 1), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[0]


def load_onnx(path: str | Path, batch_size: int = 32, threads: int | None = None) -> tuple[OnnxBackend, ModelInfo]:
    """Open an exported ``.onnx`` file: an ONNX Runtime backend and the stored :class:`ModelInfo`
    (``threads``: intra-op threads of the session; None: one per core)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a loaded model's optimiser notes are noise to users
    # Idle worker threads sleep instead of spinning: on a CPU shared with image
    # decoding (the service) or other programs, spinning doubled the latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  ONNX Runtime raises its own untyped errors for foreign bytes
        raise CheckpointError(f"{path} is not a readable ONNX model ({first_line(exc)})") from None
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if meta is None:
        raise CheckpointError(f"{path} is an ONNX model without medcls metadata (make it with `medcls export`)")
    try:
        info = ModelInfo(**upgrade_info(json.loads(meta)["info"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged medcls metadata ({exc})") from None
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != [INPUT_NAME] or names[:2] != list(OUTPUT_NAMES):
        raise CheckpointError(f"{path}: expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}, got {names}")
    return OnnxBackend(session, batch_size, threads), info
