"""The web service: a FastAPI app around one :class:`~medcls.inference.predictor.Predictor`.

``POST /v1/predict`` takes images (JPEG, PNG, DICOM, ...) as the repeatable
multipart field ``file`` and returns, per image, the class, the calibrated
probabilities, the threshold, the model id and the latency; ``GET /healthz``,
``GET /v1/model`` (model card facts), ``POST /v1/preview`` and ``POST /v1/heatmap``
(the image as read, and its Grad-CAM++ overlay, as PNG), the OpenAPI schema at
``/openapi.json`` and the web page at ``/``. Every bad input gets a 4xx JSON ``{"detail": ...}``
naming the problem; images are decoded in the model's worker threads and concurrent
requests share model batches (:class:`MicroBatcher`). Under load the service bounds its
work: a per-request pixel budget, one low-priority thread for previews, heat maps and large
images, a bounded line for the model (503 with ``Retry-After`` beyond) that serves small
requests first, work cancelled when a client leaves, and security headers, a Host check and
an optional API key (:mod:`.security`). Each answer says where its time went (``Server-Timing``,
:mod:`.timing`)."""

from __future__ import annotations

import io
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Callable, TypeVar

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from medcls.core.version import __version__
from medcls.data.images import SHRINK_ABOVE, ImageLoadError, image_pixels, load_thumbnail
from medcls.explain.gradcam import Explainer
from medcls.inference.predictor import Prediction, Predictor
from medcls.models.checkpoint import checkpoint_summary
from medcls.serving.batching import MicroBatcher
from medcls.serving.disconnect import CancelOnDisconnect
from medcls.serving.limits import BodyLimit, UploadTooLarge
from medcls.serving.monitoring import MetricsMiddleware, Monitor
from medcls.serving.pool import RETRY_AFTER_S, Busy, WorkerPool
from medcls.serving.security import Guard, SecuritySettings
from medcls.serving.timing import ServerTiming

T = TypeVar("T")
log = logging.getLogger(__name__)
STATIC = resources.files("medcls.serving") / "static"
FIELD = "file"
PREVIEW_SIZE = 512
# Browsers and HTTP clients label images by extension or not at all; the bytes
# themselves decide what an upload is, these labels only rule out text and the like.
ACCEPTED_TYPES = ("image/", "application/dicom", "application/octet-stream")


# Measured on a busy 2-core CPU with the 224 px seed CNN (benchmarks/): PyTorch's
# per-call thread synchronisation costs 1.7-5x more CPU per image one by one than
# in batches of 8 when the CPU is contended; ONNX Runtime (no spin-waiting) costs
# the same either way, and batches of 8 lowered the service's throughput. Compiled
# models ("pytorch-compiled") run single-threaded like ONNX Runtime: no batching.
AUTO_BATCH = {"pytorch": 8, "onnxruntime": 1}
# Previews, heat maps and the decoding of large images (over SHRINK_ABOVE pixels, hundreds of MB
# while decoding; for /v1/predict too, so that they do not hold up the model's batches): one at
# a time, four more waiting: a 9000 x 9000 PNG keeps a core busy for about a second.
# The heavy thread runs 10 nice levels below the service and under SCHED_IDLE (only on CPU time the
# rest leaves): measured under benchmarks/hostile_load.py, at the same priority it took as much CPU
# as the model's batches and made each of them about 2x slower; at nice 10 alone it still took 12 of
# 40 CPU seconds and the normal clients' p95 was 1.5-2.2x the quiet one; under SCHED_IDLE 8.5 s, 1.5-1.6x.
HEAVY_WORKERS, HEAVY_WAITING, HEAVY_NICE = 1, 4, 10
HEAVY_IDLE = True


@dataclass
class ServiceSettings:
    max_upload_bytes: int = 20_000_000  # largest request body
    max_files: int = 16  # most images in one request
    max_batch: int | None = None  # most images run through the model together (1: none; None: per backend)
    max_pixels: int = 100_000_000  # most pixels (width x height, summed over the files) in one request
    max_waiting: int = 256  # most images waiting for the model; beyond: 503 with Retry-After


@dataclass(frozen=True)
class BatchCost:
    """What one model batch cost, shared by the requests whose images it ran (their ``Server-Timing``)."""
    started: float  # time.perf_counter() when a worker took the batch up
    decode_s: float
    model_s: float
    size: int  # images in the batch

    @property
    def ended(self) -> float:
        return self.started + self.decode_s + self.model_s


def add_batch_timing(timing: ServerTiming, submitted: float, batches: list[BatchCost]) -> None:
    """A request's model stages: ``wait`` (in the line, before and between its batches), ``decode``
    and ``model`` (of the batches its images ran in, the batch sizes as the description)."""
    batches = list({id(b): b for b in batches}.values())
    work = sum(b.decode_s + b.model_s for b in batches)
    timing.add("wait", max(b.ended for b in batches) - submitted - work)
    timing.add("decode", sum(b.decode_s for b in batches))
    timing.add("model", sum(b.model_s for b in batches), note="+".join(str(b.size) for b in batches))


class ImagePrediction(BaseModel):
    """One image's result; further columns of the prediction table (e.g. OOD scores) pass through."""
    model_config = ConfigDict(extra="allow")
    file: str
    class_: str = Field(alias="class")
    probabilities: dict[str, float]
    threshold: float | None
    model_id: str
    latency_ms: float


class Predictions(BaseModel):
    model_id: str
    predictions: list[ImagePrediction]


class Problem(BaseModel):
    detail: str


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "image files (JPEG, PNG, DICOM, ...); repeat the field for several"}}}}}}}
PROBLEMS = {code: {"model": Problem, "description": text} for code, text in [
    (400, "malformed multipart body"), (413, "upload or file count over the limit"),
    (415, "not multipart/form-data, or a part that is not an image"), (422, "an image cannot be read")]}


def image_result(pred: Prediction, predictor: Predictor, model_id: str, latency_ms: float) -> dict:
    """A prediction as the service's per-image JSON object."""
    info = predictor.info
    return {"file": pred.path, "class": pred.prediction, "probabilities": dict(pred.probabilities),
            "ood_score": pred.ood_score, "in_distribution": pred.in_distribution,
            "threshold": info.threshold if info.binary else None, "model_id": model_id,
            "latency_ms": round(latency_ms, 2)}


async def read_uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The uploaded files of the multipart field ``file`` as (name, bytes), checked for type and count."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"send images as multipart/form-data in the field '{FIELD}', "
                                 f"not {content_type or 'a body without content type'}")
    try:
        form = await request.form()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    parts = form.getlist(FIELD)
    if not parts:
        raise HTTPException(422, f"no image: send one or more files in the multipart field '{FIELD}'")
    if len(parts) > max_files:
        raise HTTPException(413, f"too many files: {len(parts)} in one request, the limit is {max_files}")
    uploads = []
    for i, part in enumerate(parts, 1):
        if not isinstance(part, UploadFile):
            raise HTTPException(422, f"field '{FIELD}' #{i} is text, not a file upload")
        name = part.filename or f"upload-{i}"
        if part.content_type and not part.content_type.lower().startswith(ACCEPTED_TYPES):
            raise HTTPException(415, f"{name}: content type {part.content_type} is not an image "
                                     "(JPEG, PNG, DICOM, ...)")
        uploads.append((name, await part.read()))
    return uploads


def check_pixels(uploads: list[tuple[str, bytes]], max_pixels: int) -> list[int]:
    """Each image's pixels as its header declares them (0: unknown); a 413 if more than
    ``max_pixels`` in all (checked before decoding)."""
    sizes = [(name, image_pixels(data) or 0) for name, data in uploads]
    total = sum(n for _, n in sizes)
    if total > max_pixels:
        largest = max(sizes, key=lambda s: s[1])
        raise HTTPException(413, f"too many pixels: {total / 1e6:.1f} MP in one request (largest: {largest[0]}, "
                                 f"{largest[1] / 1e6:.1f} MP), the limit is {max_pixels / 1e6:g} MP")
    return [n for _, n in sizes]


def unreadable(name: str, exc: ImageLoadError) -> HTTPException:
    """The 422 for an upload that is not a readable image, naming the file."""
    return HTTPException(422, f"{name}: {exc.reason}")


async def decode(name: str, data: bytes, fn: Callable[[bytes], T], pool: WorkerPool, timing: ServerTiming,
                 stage: str = "decode") -> T:
    """``fn(data)`` (which reads the image) on ``pool``, timed as ``wait`` (for a worker) and ``stage``;
    an unreadable image becomes a 422 naming the file."""
    submitted = time.perf_counter()

    def timed(data: bytes) -> T:
        timing.add("wait", time.perf_counter() - submitted)
        with timing.stage(stage):
            return fn(data)

    try:
        return await pool.run(timed, data)
    except ImageLoadError as exc:
        raise unreadable(name, exc) from None


def png_thumbnail(rgb: np.ndarray) -> bytes:
    """An RGB image as PNG bytes, at most :data:`PREVIEW_SIZE` pixels on its longer side."""
    img = Image.fromarray(rgb)
    img.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def create_app(predictor: Predictor, model_id: str, settings: ServiceSettings | None = None,
               explainer: Explainer | None = None, security: SecuritySettings | None = None) -> FastAPI:
    """The service for ``predictor``; ``model_id`` names the model in every answer; ``explainer``
    (Grad-CAM on a PyTorch copy of the model) serves heat maps, None: none (an ONNX model);
    ``security``: API key and allowed host names (default: none, loopback names)."""
    settings = settings or ServiceSettings()
    explain_lock = threading.Lock()  # Grad-CAM hooks one network: one explanation at a time
    heavy = WorkerPool(HEAVY_WORKERS, HEAVY_WAITING, nice=HEAVY_NICE, idle=HEAVY_IDLE)
    if settings.max_batch is None:
        settings = replace(settings, max_batch=AUTO_BATCH.get(predictor.backend.name, 1))
    info = predictor.info

    def run_uploads(items: list[tuple[str, bytes | np.ndarray, threading.Event]]) -> list:
        """Decode (but for large images, decoded on the heavy pool) and predict uploads in the
        batch worker (one thread hop per image): a
        (prediction, :class:`BatchCost`) per image; an unreadable image becomes its own 422,
        the others are still predicted. The images of requests whose client left while the batch
        was decoding (their ``gone`` event set) are not run through the model."""
        started = time.perf_counter()
        results: list = [None] * len(items)
        ready = []  # (index, name, decoded image)
        for i, (name, data, _) in enumerate(items):
            try:  # a large image comes decoded (on the heavy pool)
                ready.append((i, name, data if isinstance(data, np.ndarray) else predictor.preprocess(data)))
            except ImageLoadError as exc:
                results[i] = unreadable(name, exc)
        live = [entry for entry in ready if not items[entry[0]][2].is_set()]
        if len(live) < len(ready):
            log.info("%d decoded images of clients who left were not run", len(ready) - len(live))
        decoded = time.perf_counter()
        rows = predictor.predict_rows(np.stack([image for _, _, image in live]),
                                      [name for _, name, _ in live]) if live else []
        cost = BatchCost(started, decoded - started, time.perf_counter() - decoded, len(items))
        for (i, _, _), row in zip(live, rows):
            results[i] = (row, cost)
        return results

    batcher: MicroBatcher = MicroBatcher(run_uploads, settings.max_batch,
                                         getattr(predictor.backend, "parallel_runs", 1),  # PyTorch: one, all cores
                                         max_pending=settings.max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One image through the model before the first request: compiling (--compile) and
        # ONNX Runtime's first-run set-up are not a user's latency.
        blank = np.zeros((1, info.image_size, info.image_size, info.in_channels), np.uint8)
        await run_in_threadpool(predictor.predict_rows, blank, ["warm-up"])
        batcher.start()
        yield
        await batcher.stop()
        heavy.shutdown()

    # /docs and /redoc with Swagger UI's and ReDoc's files from the fastapi-offline package, not a CDN:
    # hospital networks are often air-gapped
    app = FastAPIOffline(title="medcls", version=__version__, lifespan=lifespan,
                         description=f"Image classification with model {model_id} ({', '.join(info.classes)}).")
    app.state.batcher, app.state.heavy = batcher, heavy  # their lines' lengths: for monitoring
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    monitor = Monitor(info.classes, None if predictor.ood is None else predictor.ood.flag_rate)
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(Guard, settings=security or SecuritySettings())  # before any work
    app.add_middleware(MetricsMiddleware, monitor=monitor)  # outermost: 413s and refusals are counted too
    app.include_router(monitor.router())

    @app.exception_handler(UploadTooLarge)
    async def too_large(request: Request, exc: UploadTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"model_id": model_id, **monitor.health()}  # status "drift" when the OOD flag rate moved

    @app.get("/v1/model")
    async def model_card() -> dict:
        """Facts about the served model: classes, input, decision rule, calibration, limits."""
        return {"model_id": model_id, "backend": predictor.backend.name, "medcls_version": __version__,
                **checkpoint_summary(info), "ordinal": info.ordinal, "heatmaps": explainer is not None,
                "ood": None if predictor.ood is None else {"method": predictor.ood.method,
                                                           "threshold": predictor.ood.threshold,
                                                           "flag_rate": predictor.ood.flag_rate},
                "limits": asdict(settings)}

    @app.post("/v1/predict", response_model=Predictions, responses=PROBLEMS, openapi_extra=UPLOAD_BODY)
    async def predict(request: Request) -> JSONResponse:
        """Classify each uploaded image; the whole request fails (4xx) if any image is unreadable."""
        timing = ServerTiming()
        with timing.stage("read"):
            uploads = await read_uploads(request, settings.max_files)
            pixels = check_pixels(uploads, settings.max_pixels)
        uploads = [(name, await decode(name, data, predictor.preprocess, heavy, timing, "large")
                    if n > SHRINK_ABOVE else data) for (name, data), n in zip(uploads, pixels)]
        submitted = time.perf_counter()
        gone = threading.Event()  # set when this handler ends, by an answer or its client leaving
        try:
            results = await batcher.submit_all([(name, data, gone) for name, data in uploads])  # the first 422 fails all
        finally:
            gone.set()
        latency_ms = (time.perf_counter() - submitted) * 1000
        rows = [row for row, _ in results]
        add_batch_timing(timing, submitted, [cost for _, cost in results])
        monitor.observe(rows)
        # A response object skips FastAPI's re-validation against ``Predictions`` (built here from
        # the same fields; the schema still documents it): measurable CPU per request under load.
        return JSONResponse({"model_id": model_id, "predictions": [
            image_result(row, predictor, model_id, latency_ms) for row in rows]}, headers=timing.header())

    @app.post("/v1/preview", responses={200: {"content": {"image/png": {}}}, **PROBLEMS}, openapi_extra=UPLOAD_BODY)
    async def preview(request: Request) -> Response:
        """The uploaded image as PNG (at most 512 px), as medcls reads it: DICOM windowed, for the page to show."""
        timing = ServerTiming()
        with timing.stage("read"):
            [(name, data)] = uploads = await read_uploads(request, 1)
            check_pixels(uploads, settings.max_pixels)
        png = await decode(name, data, lambda b: png_thumbnail(load_thumbnail(b, "rgb", PREVIEW_SIZE)), heavy, timing)
        return Response(png, media_type="image/png", headers=timing.header())

    @app.post("/v1/heatmap", responses={200: {"content": {"image/png": {}}},
                                        409: {"model": Problem, "description": "no heat maps for an ONNX model"},
                                        **PROBLEMS}, openapi_extra=UPLOAD_BODY)
    async def heatmap(request: Request) -> Response:
        """Grad-CAM++ of the predicted class over the uploaded image, as PNG (at most 512 px):
        where the model looked. Needs a PyTorch checkpoint (gradients)."""
        if explainer is None:
            raise HTTPException(409, "heat maps need the model's PyTorch checkpoint; this service runs an ONNX file")
        timing = ServerTiming()
        with timing.stage("read"):
            [(name, data)] = uploads = await read_uploads(request, 1)
            check_pixels(uploads, settings.max_pixels)

        def render(image: bytes) -> bytes:
            with explain_lock:
                [explanation] = explainer.explain([image], [name], max_side=PREVIEW_SIZE)
            return png_thumbnail(explanation.overlay())

        return Response(await decode(name, data, render, heavy, timing, "heatmap"), media_type="image/png",
                        headers=timing.header())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
