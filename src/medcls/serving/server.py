"""Starting the service: load the model (checkpoint or ONNX), name it, run uvicorn."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medcls.explain.gradcam import Explainer
from medcls.inference.predictor import Predictor
from medcls.serving.app import ServiceSettings, create_app


def model_id(path: str | Path, arch: str) -> str:
    """``<arch>-<first 12 hex digits of the file's SHA-256>``: changes whenever the weights do."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{arch}-{digest.hexdigest()[:12]}"


def load_app(model: str | Path | None = None, settings: ServiceSettings | None = None, compile: bool = False):
    """The FastAPI app serving ``model`` (``model.pt``, a run folder or an exported ``.onnx``;
    default: the shipped model; ``compile``: a checkpoint through bf16 TorchInductor)."""
    from medcls.assets import shipped_model

    model = model or shipped_model()
    # ONNX Runtime and compiled models: single-threaded runs, one per core at a time, beat one
    # run spread over all cores for the service's single images.
    predictor = Predictor.load(model, threads=1, compile=compile)
    # Heat maps need gradients: a PyTorch copy of a checkpoint of its own (Grad-CAM hooks it).
    explainer = None if predictor.backend.name == "onnxruntime" else Explainer(Predictor.from_checkpoint(model))
    return create_app(predictor, model_id(model, predictor.info.arch), settings, explainer)


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServiceSettings | None = None, compile: bool = False) -> None:
    """Serve ``model`` (default: the shipped model) on ``host:port`` until interrupted (loopback only by default)."""
    import sys

    import uvicorn

    sys.setswitchinterval(0.0005)
    if compile:
        import torch

        torch.set_num_threads(1)  # compiled kernels take it at compile time: one run per core (see load_app)
    app = load_app(model, settings, compile)
    print(f"medcls: serving {model or 'the shipped model'} at http://{host}:{port}/ (API docs: /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
