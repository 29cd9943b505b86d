"""Starting the service: load the model (checkpoint or ONNX), name it, run uvicorn with
the connection limits (:class:`~medcls.serving.limits.ConnectionLimits`)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from medcls.config import ConfigError
from medcls.explain.gradcam import Explainer
from medcls.inference.predictor import Predictor
from medcls.serving.app import ServiceSettings, create_app
from medcls.serving.limits import ConnectionLimits, guarded_protocol
from medcls.serving.security import API_KEY_ENV, SecuritySettings, is_loopback

log = logging.getLogger(__name__)
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this


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


def load_app(model: str | Path | None = None, settings: ServiceSettings | None = None, compile: bool = False,
             security: SecuritySettings | None = None):
    """The FastAPI app serving ``model`` (``model.pt``, a run folder or an exported ``.onnx``;
    or a shipped model's name; default: the shipped chest X-ray model; ``compile``: a checkpoint through
    bf16 TorchInductor)."""
    from medcls.assets import resolve_model

    model = resolve_model(model)
    # ONNX Runtime and compiled models: single-threaded runs, one per core at a time, beat one
    # run spread over all cores for the service's single images.
    predictor = Predictor.load(model, threads=1, compile=compile)
    # Heat maps need gradients: a PyTorch copy of a checkpoint of its own (Grad-CAM hooks it).
    explainer = None if predictor.backend.name == "onnxruntime" else Explainer(Predictor.from_checkpoint(model))
    return create_app(predictor, model_id(model, predictor.info.arch), settings, explainer, security)


def server_config(app, host: str = "127.0.0.1", port: int = 8000, limits: ConnectionLimits | None = None):
    """The uvicorn configuration medcls serves with: header size and read time-outs enforced."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          http=guarded_protocol(limits or ConnectionLimits()), timeout_keep_alive=KEEP_ALIVE_S)


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          settings: ServiceSettings | None = None, compile: bool = False, api_key: str | None = None,
          allowed_hosts: list[str] | None = None) -> None:
    """Serve ``model`` (default: the shipped model) on ``host:port`` until interrupted (loopback only
    by default). ``api_key`` (default: $MEDCLS_API_KEY) is then needed for the ``/v1/`` endpoints;
    ``allowed_hosts``: the names clients may use in the Host header (default: see
    :meth:`SecuritySettings.for_bind`)."""
    import sys

    import uvicorn

    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range (allowed: 1 to 65535)")
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    security = SecuritySettings.for_bind(host, api_key, allowed_hosts)
    if not is_loopback(host) and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach port %d can use the model; "
                    "set --api-key or %s", host, port, API_KEY_ENV)

    sys.setswitchinterval(0.0005)
    if compile:
        import torch

        torch.set_num_threads(1)  # compiled kernels take it at compile time: one run per core (see load_app)
    app = load_app(model, settings, compile, security)
    print(f"medcls: serving {model or 'the shipped model'} at http://{host}:{port}/ (API docs: /docs)", flush=True)
    uvicorn.Server(server_config(app, host, port)).run()
