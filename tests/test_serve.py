"""The service end to end: a real ``medcls serve`` process on 127.0.0.1 with the
exported ONNX model, real HTTP uploads of real and broken images, a fuzzer,
and the web page in Debian's chromium driven by Playwright."""

import asyncio
import contextlib
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT, XRAY
from dicom_files import dicom_bytes, xray_dicom
from medcls.assets import shipped_model
from medcls.inference.predictor import Prediction, Predictor
from medcls.ood.probes import synthetic_images
from medcls.serving.app import Predictions, image_result
from medcls.serving.batching import MicroBatcher
from medcls.serving.server import load_app, model_id

pytestmark = pytest.mark.data  # reads the real data sets directly

CLASSES = ["NORMAL", "PNEUMONIA"]
JPEG = XRAY / "test" / "NORMAL" / "IM-0001-0001.jpeg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_onnx, tmp_path_factory):
    """``medcls serve`` in a subprocess on a free loopback port, with the default limits."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "medcls.cli", "serve", "--model", str(trained_onnx),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"medcls serve exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"medcls serve did not answer within 180 s: {log.read_text()}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) is not None


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def post(client: httpx.Client, *files: tuple[str, bytes, str], path: str = "/v1/predict") -> httpx.Response:
    return client.post(path, files=[("file", f) for f in files])


def png_bomb(side: int = 20000) -> bytes:
    """A real 20000 x 20000 grayscale PNG (400 MB of pixels) in about 2 MB of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, rows = zlib.compressobj(1), bytes((side + 1) * 500)  # filter byte + pixels, 500 rows at a time
    idat = b"".join(z.compress(rows) for _ in range(side // 500)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_health_model_card_and_schema(client, trained_run):
    assert client.get("/healthz").json()["status"] == "ok"
    card = client.get("/v1/model").json()
    expected = Predictor.load(trained_run).info
    assert card["backend"] == "onnxruntime" and card["classes"] == CLASSES
    assert card["threshold"] == expected.threshold and card["image_size"] == 64
    assert card["ood"]["threshold"] == pytest.approx(expected.ood.threshold)
    assert card["limits"] == {"max_upload_bytes": 20_000_000, "max_files": 16, "max_batch": 1,
                              "max_pixels": 100_000_000, "max_waiting": 256}
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["items"]["format"] == "binary"
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    for name in ("index.html", "app.js", "style.css"):
        assert "://" not in client.get(f"/static/{name}").text  # no external resources


def test_predict_real_images_equals_the_checkpoint(client, trained_run):
    files = sorted((XRAY / "test" / "PNEUMONIA").glob("*.jpeg"))[:3] + [JPEG]
    uploads = [(f.name, f.read_bytes(), "image/jpeg") for f in files]
    uploads.append(("xray.dcm", xray_dicom(JPEG), "application/dicom"))
    res = post(client, *uploads)
    assert res.status_code == 200, res.text
    body = res.json()
    card = client.get("/v1/model").json()
    want, _ = Predictor.load(trained_run).predict(files, names=[f.name for f in files])
    assert body["model_id"] == card["model_id"] and [p["file"] for p in body["predictions"]] == [u[0] for u in uploads]
    for got, row in zip(body["predictions"], want):
        assert got["class"] == row.prediction and got["model_id"] == card["model_id"]
        assert got["probabilities"] == pytest.approx({c: row.probabilities[c] for c in CLASSES}, abs=1e-5)
        assert got["threshold"] == card["threshold"] and got["latency_ms"] > 0
    # The DICOM holds the JPEG's pixels at full size (the JPEG itself is decoded at reduced scale).
    dicom = body["predictions"][-1]["probabilities"]["PNEUMONIA"]
    assert dicom == pytest.approx(want[-1].probabilities["PNEUMONIA"], abs=0.05)
    preview = post(client, uploads[-1], path="/v1/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"


def test_bad_inputs_get_clear_4xx_and_the_server_stays_up(client):
    jpeg = JPEG.read_bytes()
    cases = [
        ([("notes.jpg", b"just some text, not pixels" * 10, "image/jpeg")], 422, "notes.jpg: not an image file"),
        ([("cut.jpeg", jpeg[:len(jpeg) // 3], "image/jpeg")], 422, "cut.jpeg: corrupt or truncated image data"),
        ([("empty.png", b"", "image/png")], 422, "empty.png: file is empty (0 bytes)"),
        ([("bomb.png", png_bomb(), "image/png")], 422, "bomb.png: image is too large (decompression bomb)"),
        ([("huge.jpeg", jpeg + bytes(21_000_000), "image/jpeg")], 413, "upload too large: the limit is 20 MB"),
        ([("report.txt", b"hello", "text/plain")], 415, "report.txt: content type text/plain is not an image"),
        ([(f"{i}.jpeg", jpeg, "image/jpeg") for i in range(17)], 413,
         "too many files: 17 in one request, the limit is 16"),
        ([("film.dcm", dicom_bytes(np.zeros((2, 8, 8), np.uint16), bits_stored=12), "application/dicom")], 422,
         "film.dcm: multi-frame DICOM (2 frames) is not supported"),
        ([("ok.jpeg", jpeg, "image/jpeg"), ("empty.png", b"", "image/png")], 422, "empty.png: file is empty"),
    ]
    for files, status, message in cases:
        res = post(client, *files)
        assert res.status_code == status and message in res.json()["detail"], (message, res.status_code, res.text)
        assert client.get("/healthz").status_code == 200
    res = client.post("/v1/predict", json={"file": "IM-0001-0001.jpeg"})
    assert res.status_code == 415 and "multipart/form-data" in res.json()["detail"]
    res = client.post("/v1/predict", data={"image": "x"}, files=[("other", ("a.jpeg", jpeg, "image/jpeg"))])
    assert res.status_code == 422 and "no image" in res.json()["detail"]
    assert post(client, ("ok.jpeg", jpeg, "image/jpeg")).status_code == 200


def test_concurrent_requests_get_their_own_answers(client, server):
    files = sorted((XRAY / "test" / "PNEUMONIA").glob("*.jpeg"))[:12]
    alone = {f.name: post(client, (f.name, f.read_bytes(), "image/jpeg")).json()["predictions"][0] for f in files}

    def ask(f):
        with httpx.Client(base_url=server, timeout=60) as c:
            return post(c, (f.name, f.read_bytes(), "image/jpeg")).json()["predictions"][0]

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, files * 2))
    for got, f in zip(together, files * 2):
        assert got["file"] == f.name
        assert got["probabilities"] == pytest.approx(alone[f.name]["probabilities"], abs=1e-6)


def test_a_prediction_becomes_the_answer_with_every_field(trained_run):
    pred = Prediction("a.png", "NORMAL", {"NORMAL": 0.7, "PNEUMONIA": 0.3}, ood_score=2.5, in_distribution=False)
    predictor = Predictor.load(trained_run)
    result = image_result(pred, predictor, "seed-cnn-abc", 1.234)
    assert result == {"file": "a.png", "class": "NORMAL", "probabilities": {"NORMAL": 0.7, "PNEUMONIA": 0.3},
                      "ood_score": 2.5, "in_distribution": False, "threshold": predictor.info.threshold,
                      "model_id": "seed-cnn-abc", "latency_ms": 1.23}
    answer = Predictions.model_validate({"model_id": "seed-cnn-abc", "predictions": [result]})
    assert answer.model_dump(by_alias=True)["predictions"] == [result]


def test_batcher_groups_concurrent_items_and_keeps_them_apart():
    sizes = []

    def times_ten(items):
        sizes.append(len(items))
        if -1 in items:
            raise ValueError("bad item")
        time.sleep(0.01)
        return [x * 10 for x in items]

    async def scenario():
        batcher = MicroBatcher(times_ten, max_batch=4)
        batcher.start()
        try:
            results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
            with pytest.raises(ValueError, match="bad item"):
                await batcher.submit(-1)
            return results, await batcher.submit(7)  # still working after a failed batch
        finally:
            await batcher.stop()

    results, after = asyncio.run(scenario())
    assert results == [i * 10 for i in range(10)] and after == 70
    assert sizes[:3] == [4, 4, 2]


def test_batcher_hands_an_items_own_failure_to_that_item_only():
    """``fn`` may answer an item with an exception (an unreadable upload): only its caller gets it."""
    def halve(items):
        return [ValueError(f"odd {x}") if x % 2 else x // 2 for x in items]

    async def scenario():
        batcher = MicroBatcher(halve, max_batch=8)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert results[0::2] == [0, 1, 2]
    assert [str(e) for e in results[1::2]] == ["odd 1", "odd 3", "odd 5"]


def test_batcher_with_two_workers_runs_two_batches_at_once():
    both_inside = threading.Barrier(2, timeout=10)  # breaks unless two calls are in fn together

    def meet(items):
        both_inside.wait()
        return items

    async def scenario():
        batcher = MicroBatcher(meet, max_batch=1, workers=2)
        batcher.start()
        try:
            return await asyncio.gather(batcher.submit("a"), batcher.submit("b"))
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ["a", "b"]
    with pytest.raises(ValueError, match="workers must be at least 1"):
        MicroBatcher(meet, workers=0)


JPEG_BYTES = JPEG.read_bytes()


@st.composite
def damaged_jpeg(draw) -> bytes:
    data = bytearray(JPEG_BYTES[:draw(st.integers(0, len(JPEG_BYTES)))])
    for pos, value in draw(st.lists(st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255)),
                                    max_size=6)):
        if data:
            data[pos] = value
    return bytes(data)


uploads = st.tuples(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
    st.one_of(st.binary(max_size=4096), damaged_jpeg(), st.just(JPEG_BYTES)),
    st.one_of(st.sampled_from(["image/jpeg", "image/png", "application/dicom", "application/octet-stream",
                               "text/plain", "application/json"]),
              st.from_regex(r"[a-z]{1,8}/[a-z0-9.+-]{1,12}", fullmatch=True)))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(uploads, min_size=1, max_size=3))
def test_fuzzed_uploads_never_break_the_server(client, files):
    res = post(client, *files)
    assert res.status_code in (200, 413, 415, 422), res.text
    body = res.json()
    if res.status_code == 200:
        assert len(body["predictions"]) == len(files)
        assert all(p["class"] in CLASSES for p in body["predictions"])
    else:
        assert isinstance(body["detail"], str) and body["detail"]
    assert client.get("/healthz").status_code == 200


@contextlib.contextmanager
def thread_server(app):
    """``app`` on a real uvicorn server on a free loopback port, in a thread of this process."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url="http://127.0.0.1:%d" % sock.getsockname()[1], timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


def test_serving_a_checkpoint_in_a_thread(trained_run):
    """The PyTorch backend behind the same app."""
    with thread_server(load_app(trained_run)) as c:
        card = c.get("/v1/model").json()
        assert card["backend"] == "pytorch" and card["limits"]["max_batch"] == 8
        got = post(c, (JPEG.name, JPEG_BYTES, "image/jpeg")).json()["predictions"][0]
    [want], _ = Predictor.load(trained_run).predict([JPEG])
    assert got["class"] == want.prediction and got["probabilities"]["NORMAL"] == want.probabilities["NORMAL"]


def test_heat_maps_from_a_checkpoint_and_not_from_onnx(client, trained_run):
    """``POST /v1/heatmap``: Grad-CAM++ over the image as PNG for a checkpoint; a clear 409 for ONNX."""
    refused = post(client, (JPEG.name, JPEG_BYTES, "image/jpeg"), path="/v1/heatmap")
    assert refused.status_code == 409 and "PyTorch checkpoint" in refused.json()["detail"]
    assert client.get("/v1/model").json()["heatmaps"] is False
    with thread_server(load_app(trained_run)) as c:
        assert c.get("/v1/model").json()["heatmaps"] is True
        res = post(c, (JPEG.name, JPEG_BYTES, "image/jpeg"), path="/v1/heatmap")
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        heat = np.asarray(Image.open(io.BytesIO(res.content)).convert("RGB")).astype(int)
        plain = np.asarray(Image.open(io.BytesIO(post(c, (JPEG.name, JPEG_BYTES, "image/jpeg"),
                                                      path="/v1/preview").content)).convert("RGB")).astype(int)
        assert heat.shape == plain.shape and max(heat.shape[:2]) <= 512
        assert np.abs(heat[..., 0] - heat[..., 2]).mean() > 5  # coloured by the map, unlike the gray X-ray
        bad = post(c, ("broken.jpeg", JPEG_BYTES[:200], "image/jpeg"), path="/v1/heatmap")
        assert bad.status_code == 422 and bad.json()["detail"].startswith("broken.jpeg: ")
        assert c.get("/healthz").status_code == 200


def test_serve_defaults_to_the_shipped_model():
    """``medcls serve`` without --model serves the packaged model, OOD flag included."""
    with thread_server(load_app()) as c:
        card = c.get("/v1/model").json()
        got = post(c, (JPEG.name, JPEG_BYTES, "image/jpeg")).json()["predictions"][0]
    shipped = Predictor.load(shipped_model())
    [want], _ = shipped.predict([JPEG])
    assert card["arch"] == shipped.info.arch and card["model_id"] == model_id(shipped_model(), shipped.info.arch)
    assert got["class"] == want.prediction and got["probabilities"]["NORMAL"] == want.probabilities["NORMAL"]
    assert got["ood_score"] == want.ood_score is not None


def wait_in_page(page, condition: str, timeout: float = 60) -> None:
    """Poll a JavaScript condition through ``page.evaluate`` (the DevTools protocol): Playwright's
    ``wait_for_function`` evaluates strings with the page's ``eval``, which the service's CSP forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"the page never met: {condition}"
        time.sleep(0.05)


@pytest.mark.browser
def test_web_page_in_chromium(server, client, tmp_path):
    from playwright.sync_api import sync_playwright

    dicom = tmp_path / "xray.dcm"
    dicom.write_bytes(xray_dicom(JPEG))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    image = XRAY / "test" / "PNEUMONIA" / "person1_virus_6.jpeg"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_page()
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(server)
            wait_in_page(page, "document.getElementById('model').textContent.startsWith('model ')")
            # before the first upload: no answer area, so no broken-image placeholder
            assert not page.locator("#output").is_visible() and not page.locator("#preview").is_visible()
            assert "classes: NORMAL, PNEUMONIA" in page.inner_text("#model")
            for path in (image, dicom):
                page.set_input_files("#file", str(path))
                wait_in_page(page, f"document.getElementById('filename').textContent === '{path.name}' && "
                                       "document.getElementById('result-class').textContent !== '' && "
                                       "document.getElementById('preview').naturalWidth > 0")
                assert page.inner_text("#result-class") in CLASSES
                text = page.inner_text("#result-text")
                assert "p(PNEUMONIA) = 0." in text and "threshold" in text
                assert page.locator(".bar").count() == 2
                widths = page.eval_on_selector_all(".bar .fill", "els => els.map(e => parseFloat(e.style.width))")
                assert sum(widths) == pytest.approx(100, abs=0.2)
            assert page.locator("#heatmap-figure").is_hidden()  # an ONNX model has no heat maps
            # The OOD flag: a noise image gets the warning and its answer is marked untrusted; the
            # X-ray's warning shows exactly when the API flags it.
            noise = tmp_path / "noise.png"
            synthetic_images("noise", 1, seed=3)[0].save(noise)
            for path in (image, noise):
                flag = post(client, (path.name, path.read_bytes(), "image/png"))
                in_distribution = flag.json()["predictions"][0]["in_distribution"]
                page.set_input_files("#file", str(path))
                wait_in_page(page, f"document.getElementById('filename').textContent === '{path.name}' && "
                                       "document.getElementById('result-class').textContent !== ''")
                assert page.locator("#ood-warning").is_visible() == (not in_distribution)
                assert ("(untrusted)" in page.inner_text("#result-class")) == (not in_distribution)
            assert in_distribution is False  # the noise image
            warning = page.inner_text("#ood-warning")
            assert "does not look like the images this model was trained on" in warning and "untrusted" in warning
            assert "OOD score" in page.inner_text("#details")
            page.set_input_files("#file", str(empty))
            page.wait_for_selector("#error:not([hidden])")
            assert "empty.png: file is empty (0 bytes)" in page.inner_text("#error")
            assert failed == []
        finally:
            browser.close()


@pytest.mark.browser
def test_web_page_shows_the_heat_map_of_a_checkpoint(trained_run):
    from playwright.sync_api import sync_playwright

    with thread_server(load_app(trained_run)) as c, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_page()
            page.goto(str(c.base_url))
            wait_in_page(page, "document.getElementById('model').textContent.startsWith('model ')")
            page.set_input_files("#file", str(JPEG))
            wait_in_page(page, "document.getElementById('result-class').textContent !== '' && "
                                   "!document.getElementById('heatmap-figure').hidden && "
                                   "document.getElementById('heatmap').naturalWidth > 0")
            assert "where the model looked" in page.inner_text("#heatmap-figure")
        finally:
            browser.close()


@pytest.mark.browser
def test_service_and_page_grade_a_fundus_photograph_with_the_retinopathy_model():
    """``medcls serve --model retinopathy``: the card shows five grades and the cut-points, an answer
    has a probability per grade, and the page shows five bars and the expected grade it was cut from."""
    from playwright.sync_api import sync_playwright

    from conftest import FUNDUS
    from medcls.data.datasets import RETINOPATHY_GRADES

    image = sorted((FUNDUS / "Moderate DR").iterdir())[0]
    with thread_server(load_app("retinopathy")) as c:
        card = c.get("/v1/model").json()
        assert card["classes"] == RETINOPATHY_GRADES and card["ordinal"] and len(card["cutpoints"]) == 4
        got = post(c, (image.name, image.read_bytes(), "image/jpeg")).json()["predictions"][0]
        assert list(got["probabilities"]) == RETINOPATHY_GRADES and got["class"] in RETINOPATHY_GRADES
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            try:
                page = browser.new_page()
                page.goto(str(c.base_url))
                wait_in_page(page, "document.getElementById('model').textContent.startsWith('model ')")
                assert "classes: Healthy, Mild DR, Moderate DR, Severe DR, Proliferate DR" in page.inner_text("#model")
                page.set_input_files("#file", str(image))
                wait_in_page(page, "document.getElementById('result-class').textContent !== ''")
                assert page.inner_text("#result-class").startswith(got["class"])
                assert page.locator(".bar").count() == 5
                expected = sum(k * got["probabilities"][g] for k, g in enumerate(RETINOPATHY_GRADES))
                assert f"expected grade {expected:.2f}" in page.inner_text("#result-text")
            finally:
                browser.close()
