"""Hostile and careless input: the command line answers each bad input with one line and
exit status 2, leaving what the user had intact; damaged training checkpoints are refused;
the web service (real servers on loopback) holds against large images, abandoned requests,
oversized headers, slow clients, foreign hosts and missing API keys."""

import contextlib
import ctypes
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from conftest import ROOT


class Pwned:
    """A pickle that runs a shell command when loaded without ``weights_only``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# Runs ``medcls.cli.main`` on each case in one process (torch is imported once, not per case)
# and prints {case: [exit status, stderr]}; a traceback is caught and shown as such.
CLI_CASES = """
import contextlib, io, json, sys, traceback
from medcls.cli import main
out = {}
for name, args in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = "Traceback"
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def _without_root_override() -> None:
    """In the child before exec: drop the capabilities that let root write read-only folders
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), so a 0o555 folder refuses root too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):
            if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli_cases(cases: dict[str, list[str]], cwd) -> dict[str, tuple]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", CLI_CASES, json.dumps(cases)], capture_output=True, text=True,
                         cwd=cwd, env=env, preexec_fn=_without_root_override, timeout=600)
    assert res.returncode == 0, res.stderr
    return {name: tuple(v) for name, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def assert_one_line(result: tuple, *needles: str) -> None:
    code, stderr = result
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "Traceback" not in stderr and all(n in lines[0] for n in needles), stderr


def class_folders(root, classes=("A", "B"), n: int = 8, size: int = 64):
    """A tiny generated data set in class folders (no image data committed)."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size), np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


def read_only(folder):
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def test_careless_command_lines_get_one_line_and_exit_2(tmp_path):
    """#20 items 5 and 6: binary config and manifest, a missing accelerator package, one class,
    read-only output/run/cache folders and --out, an empty folder, an unknown --out suffix."""
    data, one = class_folders(tmp_path / "data"), class_folders(tmp_path / "one", classes=("A",))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty").mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "pred.csv").write_text("earlier,work\n")
    read_only(kept)
    quick = ["--dataset", "class-folders", "--set", "data.image_size=32", "--set", "model.kwargs.padding=same",
             "--set", "train.epochs=1", "--set", "data.workers=1", "--set", f"output_dir={tmp_path / 'runs'}"]
    img = str(data / "A" / "A0.png")
    import torch

    torch.save({"format": "medcls-checkpoint", "payload": Pwned(tmp_path / "pwned")}, tmp_path / "evil.pt")
    cases = {
        "unsafe pickle": ["predict", img, "--model", str(tmp_path / "evil.pt")],
        "beyond loopback": ["serve", "--host", "0.0.0.0", "--model", str(tmp_path / "missing.pt")],
        "binary config": ["train", "--config", str(binary)],
        "binary manifest": ["train", "--data", str(data), *quick, "--set", f"data.manifest={binary}"],
        "tpu": ["train", "--data", str(data), *quick, "--set", "train.accelerator=tpu"],
        "one class": ["train", "--data", str(one), *quick],
        "read-only output": ["train", "--data", str(data), *quick, "--set", f"output_dir={read_only(tmp_path / 'ro')}"],
        "read-only run dir": ["train", "--data", str(data), *quick, "--run-dir", str(read_only(tmp_path / "run"))],
        "read-only cache": ["train", "--data", str(data), *quick, "--set", f"data.cache_dir={read_only(tmp_path / 'c')}"],
        "read-only --out": ["predict", img, "--out", str(kept / "pred.csv")],
        "empty folder": ["predict", str(tmp_path / "empty"), "--out", str(tmp_path / "empty.csv")],
        "xlsx": ["predict", img, "--out", str(tmp_path / "pred.xlsx")],
    }
    got = run_cli_cases(cases, tmp_path)
    assert_one_line(got["binary config"], "binary.yaml", "not a YAML text file")
    assert_one_line(got["binary manifest"], "binary.yaml", "not a medcls split manifest")
    assert_one_line(got["tpu"], "train.accelerator", "tpu")
    assert_one_line(got["one class"], "one class folder", "at least two")
    assert_one_line(got["read-only output"], f"cannot write {tmp_path / 'ro'}")
    assert_one_line(got["read-only run dir"], f"cannot write {tmp_path / 'run'}")
    assert_one_line(got["read-only cache"], f"cannot write {tmp_path / 'c'}")
    assert_one_line(got["read-only --out"], f"cannot write {kept / 'pred.csv'}")
    assert_one_line(got["empty folder"], "no images found in", "empty")
    assert_one_line(got["xlsx"], "pred.xlsx", ".csv or .json")
    assert_one_line(got["unsafe pickle"], "evil.pt holds Python objects", "could run code")
    assert "weights_only" not in got["unsafe pickle"][1] and not (tmp_path / "pwned").exists()
    code, stderr = got["beyond loopback"]  # #20 item 8: the warning comes before anything else
    assert code == 2 and "serving on 0.0.0.0 without an API key" in stderr and "checkpoint not found" in stderr
    assert (kept / "pred.csv").read_text() == "earlier,work\n" and os.listdir(kept) == ["pred.csv"]
    assert not (tmp_path / "empty.csv").exists() and not (tmp_path / "pred.xlsx").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run folders


@pytest.mark.parametrize("args, needle", [
    (["--port", "70000"], "argument --port: 70000 is out of range (allowed: 1 to 65535)"),
    (["--port", "0"], "argument --port: 0 is out of range"),
    (["--max-batch", "0"], "argument --max-batch: 0 is out of range (allowed: at least 1)"),
    (["--max-files", "-1"], "argument --max-files: -1 is out of range"),
    (["--max-upload-mb", "nan"], "argument --max-upload-mb: nan is out of range"),
    (["--port", "eighty"], "argument --port: 'eighty' is not an integer"),
])
def test_serve_numbers_are_checked_before_anything_starts(args, needle):
    """#20 item 4: the real ``medcls serve`` process refuses impossible numbers in one line."""
    res = subprocess.run([sys.executable, "-m", "medcls.cli", "serve", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch run on a generated 2-class set at 32 px (seconds: PyTorch's ops, not the fused
    kernels, which compile on first use); its checkpoints and model serve the tests below."""
    from medcls.config import load_config
    from medcls.training.train import train

    tmp = tmp_path_factory.mktemp("tiny")
    data = class_folders(tmp / "data", n=12)
    cfg = load_config(None, [
        "data.dataset=class-folders", f"data.root={data}", "data.image_size=32", "data.workers=1",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "model.kwargs.padding=same", "train.epochs=2",
        "train.early_stopping_patience=0", "train.fuse_relu_maxpool=false", "train.fuse_first_conv=false",
        "eval.bootstrap=10", f"output_dir={tmp / 'runs'}"])
    return train(cfg, quiet=True)


def flip_in_largest_tensor(path, state_dict, byte: int, bit: int) -> None:
    """Flip one bit of the stored bytes of ``state_dict``'s largest tensor in the file ``path``."""
    big = max(state_dict.values(), key=lambda t: t.numel())
    data = bytearray(path.read_bytes())
    at = data.find(bytes(big.untyped_storage().tolist()[:4096]))  # as stored (e.g. channels-last)
    assert at > 0
    data[at + 4 * 100 + byte] ^= bit  # float 100 of the tensor
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("byte, bit", [(0, 0x01), (3, 0x40)], ids=["mantissa", "exponent"])
def test_a_flipped_bit_in_last_ckpt_is_refused_on_resume(tiny_run, tmp_path, capsys, byte, bit):
    """#20 item 7: ``train --resume`` on a damaged ``last.ckpt`` is one line and exit 2, not a silent
    resume to other weights (mantissa) or a NaN traceback (exponent); the file is left as it was."""
    import shutil

    import torch

    from medcls.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("training.json", "model.pt"):
        (run / name).unlink()  # as if killed before the end
    last = run / "checkpoints" / "last.ckpt"
    flip_in_largest_tensor(last, torch.load(last, weights_only=True)["state_dict"], byte, bit)
    damaged = last.read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "last.ckpt is damaged" in err and "SHA-256" in err, err
    assert last.read_bytes() == damaged and not (run / "model.pt").exists()


def test_checkpoints_without_a_digest_load_with_a_warning(tiny_run, tmp_path, caplog):
    """Files from before digests still load, but a removed digest (and a zeroed tensor) is not silent."""
    import torch

    from medcls.models.checkpoint import load_checkpoint
    from medcls.training.checkpointing import DIGEST, read_training_checkpoint, save_training_checkpoint

    payload = torch.load(tiny_run / "model.pt", weights_only=True)
    del payload["sha256"]
    name = max(payload["state_dict"], key=lambda k: payload["state_dict"][k].numel())
    payload["state_dict"][name].zero_()
    torch.save(payload, tmp_path / "model.pt")
    with caplog.at_level("WARNING", logger="medcls"):
        net, _ = load_checkpoint(tmp_path / "model.pt")
    assert not net.state_dict()[name].any()
    assert "model.pt has no recorded SHA-256" in caplog.text

    ckpt = read_training_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    assert DIGEST not in ckpt and set(ckpt) >= {"state_dict", "optimizer_states", "callbacks"}
    caplog.clear()
    torch.save(ckpt, tmp_path / "old.ckpt")  # as Lightning wrote it before medcls recorded digests
    with caplog.at_level("WARNING", logger="medcls"):
        read_training_checkpoint(tmp_path / "old.ckpt")
    assert "old.ckpt has no recorded SHA-256" in caplog.text
    caplog.clear()
    save_training_checkpoint(ckpt, tmp_path / "new.ckpt")  # as medcls writes it: round trip, no warning
    with caplog.at_level("WARNING", logger="medcls"):
        again = read_training_checkpoint(tmp_path / "new.ckpt")["state_dict"]
    assert again.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(again[k], ckpt["state_dict"][k]) for k in again)
    assert "SHA-256" not in caplog.text


# ---------------------------------------------------------------- the web service, on loopback

@contextlib.contextmanager
def served(app, limits=None):
    """``app`` behind medcls' own uvicorn configuration (connection limits included) on a free
    loopback port, in a thread of this process; yields (app, base URL)."""
    from medcls.serving.server import server_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, limits=limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the server to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


def wait_for(condition, what: str, timeout: float = 60) -> None:
    """Poll ``condition`` (a state change, not a duration: the tests assert no timings)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def png(side: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), 0 if mode == "L" else (0, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


SMALL = png(48)


def files(*uploads: tuple[str, bytes]) -> list:
    return [("file", (name, data, "image/png")) for name, data in uploads]


@pytest.fixture(scope="module")
def predictor(tiny_run):
    from medcls.inference.predictor import Predictor

    return Predictor.load(tiny_run)


def make_app(tiny_run, predictor=None, **settings):
    from medcls.explain.gradcam import Explainer
    from medcls.inference.predictor import Predictor
    from medcls.serving.app import ServiceSettings, create_app
    from medcls.serving.security import SecuritySettings

    security = settings.pop("security", SecuritySettings())
    predictor = predictor or Predictor.load(tiny_run)
    return create_app(predictor, "tiny", ServiceSettings(**settings), Explainer(Predictor.from_checkpoint(tiny_run)),
                      security)


def test_security_headers_hosts_and_api_key(tiny_run):
    """#20 item 8: nosniff and a CSP that fits the page on every answer, a foreign Host refused
    (DNS rebinding), the /v1/ endpoints and /metrics behind the API key; the page, /healthz and docs open."""
    from medcls.serving.security import SecuritySettings

    app = make_app(tiny_run, security=SecuritySettings.for_bind("127.0.0.1", api_key="s3cret"))
    with served(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' blob:" in csp
        assert "unsafe-inline" not in csp and page.headers["x-frame-options"] == "DENY"
        assert c.get("/healthz").status_code == 200
        docs = c.get("/docs")  # Swagger UI's inline set-up script is allowed there, and only there
        assert docs.status_code == 200 and "'unsafe-inline'" in docs.headers["content-security-policy"]

        refused = c.get("/v1/model")
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer" and refused.headers["x-content-type-options"]
        assert c.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).json()["model_id"] == "tiny"
        assert c.get("/metrics").status_code == 401  # the site's prediction mix: behind the key too
        assert "medcls_requests_total" in c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
        res = c.post("/v1/predict", files=files(("a.png", SMALL)), headers={"Authorization": "Bearer s3cret"})
        assert res.status_code == 200 and res.headers["content-security-policy"] == csp

        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
            rebound = c.get("/", headers={"Host": host})
            assert rebound.status_code == 400 and "unknown host" in rebound.json()["detail"], host
        assert c.get("/healthz", headers={"Host": f"localhost:{url.rsplit(':', 1)[1]}"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
    assert SecuritySettings.for_bind("0.0.0.0").allowed_hosts == ["*"]
    assert "10.0.0.5" in SecuritySettings.for_bind("10.0.0.5").allowed_hosts


def test_a_small_upload_of_many_pixels_is_decoded_small_and_budgeted(tiny_run):
    """#20 item 1: a 9000 x 9000 PNG (79 KB) is shrunk right after decoding (previews, heat maps and
    predictions all answer); a request over the pixel budget is a 413 naming the file, before decoding."""
    from medcls.data.images import load_image, load_thumbnail

    big = png(9000)
    assert len(big) < 100_000
    assert load_thumbnail(big, "rgb", 512).shape == (512, 512, 3)
    app = make_app(tiny_run, max_pixels=150_000_000)
    with served(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        for path in ("/v1/preview", "/v1/heatmap"):
            res = c.post(path, files=files(("big.png", big)))
            assert res.status_code == 200, res.text
            assert Image.open(io.BytesIO(res.content)).size == (512, 512)
        got = c.post("/v1/predict", files=files(("big.png", big))).json()["predictions"][0]
        over = c.post("/v1/predict", files=files(("a.png", big), ("b.png", big)))
        assert over.status_code == 413 and "162.0 MP" in over.json()["detail"] and "a.png" in over.json()["detail"]
    # the prediction is that of the image shrunk before its resize: here, an all-black image either way
    small = load_image(png(64), "grayscale", 32)
    assert np.array_equal(load_image(big, "grayscale", 32), small)
    assert set(got["probabilities"]) == {"A", "B"}


def test_full_lines_answer_503_with_retry_after(tiny_run, predictor, monkeypatch):
    """#20 item 2: the model's line (``max_waiting`` images) and the previews' pool are bounded; a
    request beyond is refused at once with 503 and Retry-After, the admitted ones still answered."""
    import medcls.serving.app as service

    gate = threading.Event()
    real_preprocess, real_thumbnail = predictor.preprocess, service.load_thumbnail
    monkeypatch.setattr(predictor, "preprocess", lambda data: gate.wait(60) and real_preprocess(data))
    monkeypatch.setattr(service, "load_thumbnail", lambda *a: gate.wait(60) and real_thumbnail(*a))
    app = make_app(tiny_run, predictor, max_waiting=4, max_batch=1)
    with served(app) as url, ThreadPoolExecutor(16) as pool:
        def post(path, n=1):
            with httpx.Client(base_url=url, timeout=120) as c:
                return c.post(path, files=files(*[(f"{i}.png", SMALL) for i in range(n)]))

        first = pool.submit(post, "/v1/predict", 1)
        wait_for(lambda: app.state.batcher.pending == 1, "the first image to be in the model's line")
        second = pool.submit(post, "/v1/predict", 3)
        wait_for(lambda: app.state.batcher.pending == 4, "the line to fill")
        refused = post("/v1/predict", 1)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["detail"]

        line = service.HEAVY_WORKERS + service.HEAVY_WAITING
        previews = [pool.submit(post, "/v1/preview") for _ in range(line)]  # decoding or waiting
        wait_for(lambda: app.state.heavy.admitted == line, "the preview pool to fill")
        busy = post("/v1/preview")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        gate.set()
        assert [f.result().status_code for f in [first, second, *previews]] == [200] * (2 + line)
        assert post("/v1/predict", 4).status_code == 200 and app.state.batcher.pending == 0


def multipart(n: int) -> tuple[bytes, bytes]:
    """A ``file`` x n multipart body of the small PNG and its content type."""
    request = httpx.Request("POST", "http://x/", files=files(*[(f"{i}.png", SMALL) for i in range(n)]))
    return request.read(), request.headers["content-type"].encode()


def test_the_work_of_a_client_who_left_is_cancelled(tiny_run, predictor, monkeypatch, caplog):
    """#20 item 2: a client that sends 16 images and hangs up while the first batch decodes gets no more
    batches run for it, nor that batch through the model, and its leaving is one log line, as is
    leaving during an upload."""
    gate, calls = threading.Event(), []
    real_preprocess = predictor.preprocess

    def counted(data):
        calls.append(1)
        gate.wait(60)
        return real_preprocess(data)

    run_through_model = []
    real_predict_rows = predictor.predict_rows

    def predicted(images, names):
        run_through_model.extend(names)
        return real_predict_rows(images, names)

    monkeypatch.setattr(predictor, "preprocess", counted)
    monkeypatch.setattr(predictor, "predict_rows", predicted)
    app = make_app(tiny_run, predictor, max_batch=4)
    body, content_type = multipart(16)
    port = None
    with caplog.at_level("INFO"), served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type +
                      b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            wait_for(lambda: calls, "the first batch to start")
        wait_for(lambda: app.state.batcher.pending == 0, "the client's images to be dropped")
        gate.set()
        with httpx.Client(base_url=url, timeout=60) as c:  # the next client is served at once
            assert c.post("/v1/predict", files=files(("a.png", SMALL))).status_code == 200
        assert len(calls) == 4 + 1  # the batch that had started, then the next client's image
        # the started batch was decoded after its client left: not run through the model
        assert run_through_model == ["warm-up", "a.png"]

        with socket.create_connection(("127.0.0.1", port)) as s:  # hangs up half-way through its upload
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type +
                      b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
        wait_for(lambda: "left during its upload to POST /v1/predict" in caplog.text, "the upload's log line")
    left = [r for r in caplog.records if "left before the answer to POST /v1/predict" in r.getMessage()]
    assert len(left) == 1 and "cancelled" in left[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection (a 60 s safety net, not a timing)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(60)
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def test_oversized_headers_and_slow_clients_are_cut_off(tiny_run):
    """#20 item 3: headers over the limit get 431; a client that stops while sending its headers
    or its body gets 408 and is disconnected, one that says nothing is disconnected."""
    from medcls.serving.limits import ConnectionLimits

    limits = ConnectionLimits(max_header_bytes=16 * 1024, header_timeout_s=0.5, body_timeout_s=0.5)
    with served(make_app(tiny_run), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        huge = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431 ") and b"request headers over 16384 bytes" in huge
        slow_headers = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n")
        assert slow_headers.startswith(b"HTTP/1.1 408 ")
        slow_body = raw_exchange(port, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                       b"multipart/form-data; boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n")
        assert slow_body.startswith(b"HTTP/1.1 408 ")
        assert raw_exchange(port, b"") == b""  # connected, silent: closed without an answer
        with httpx.Client(base_url=url, timeout=60) as c:  # normal requests, keep-alive included
            assert [c.get("/healthz").status_code for _ in range(3)] == [200] * 3
            assert c.get("/healthz", headers={"X-Ok": "b" * 8000}).status_code == 200


class GatedBatches:
    """A batcher's function that records its batches and blocks in each until ``gate`` is set."""

    def __init__(self):
        self.started, self.gate, self.batches = threading.Event(), threading.Event(), []

    def __call__(self, items):
        self.started.set()
        self.gate.wait(60)
        self.batches.append(items)
        return items

    def play(self, scene, **batcher_kwargs):
        """Run ``scene(batcher, first)`` against a MicroBatcher over this function, once its batch
        of "first" is running (and blocked); the batcher is stopped whatever the scene does."""
        import asyncio

        from medcls.serving.batching import MicroBatcher

        async def staged():
            batcher = MicroBatcher(self, **batcher_kwargs)
            batcher.start()
            try:
                first = asyncio.ensure_future(batcher.submit("first"))
                while not self.started.is_set():
                    await asyncio.sleep(0.01)
                return await scene(batcher, first)
            finally:
                await batcher.stop()

        return asyncio.run(staged())


def test_batcher_serves_the_smallest_request_first_and_bounds_its_line():
    """One image does not wait behind another client's sixteen; a full line refuses at once."""
    import asyncio

    from medcls.serving.pool import Busy

    run = GatedBatches()
    async def scene(batcher, first):
        big = asyncio.ensure_future(batcher.submit_all([f"big{i}" for i in range(16)]))
        small = asyncio.ensure_future(batcher.submit("small"))
        while batcher.pending < 18:
            await asyncio.sleep(0.01)
        with pytest.raises(Busy, match="at most 18"):
            await batcher.submit("one too many")
        run.gate.set()
        return await first, await big, await small

    first, big, small = run.play(scene, max_batch=4, max_pending=18)
    assert first == "first" and small == "small" and big == [f"big{i}" for i in range(16)]
    assert run.batches[0] == ["first"] and run.batches[1][0] == "small"  # ahead of big's remaining twelve


def test_answers_say_where_their_time_went(tiny_run):
    """Each predict, preview and heat-map answer carries its stages as a ``Server-Timing`` header
    (what benchmarks/hostile_load.py splits latencies by): reading, waiting, decoding, the model."""
    from medcls.serving.timing import ServerTiming, parse_server_timing

    timing = ServerTiming()
    timing.add("model", 0.0801, note="3+2")
    timing.add("wait", 0.002)
    assert parse_server_timing(timing.header()["Server-Timing"]) == {"model": (80.1, "3+2"), "wait": (2.0, None)}
    with served(make_app(tiny_run, max_batch=4)) as url, httpx.Client(base_url=url, timeout=60) as c:
        res = c.post("/v1/predict", files=files(*[(f"{i}.png", SMALL) for i in range(6)]))
        stages = parse_server_timing(res.headers["server-timing"])
        assert list(stages) == ["read", "wait", "decode", "model"] and all(ms >= 0 for ms, _ in stages.values())
        assert sum(int(n) for n in stages["model"][1].split("+")) >= 6  # the batches its images ran in
        for path, work in (("/v1/preview", "decode"), ("/v1/heatmap", "heatmap")):
            stages = parse_server_timing(c.post(path, files=files(("a.png", SMALL))).headers["server-timing"])
            assert list(stages) == ["read", "wait", work], path


def test_bulk_requests_do_not_fill_small_batches_and_still_get_their_turn():
    """#20 item 9: a batch of single images is not filled up with another client's bulk images; a
    request of more than one batch goes first once PATIENCE batches passed it over, runs a quarter
    batch right after a batch of small requests (full ones after its own), and may not take the
    last sixteenth of the line, kept for small requests."""
    import asyncio

    from medcls.serving.batching import PATIENCE
    from medcls.serving.pool import Busy

    run = GatedBatches()
    async def scene(batcher, first):
        bulk = asyncio.ensure_future(batcher.submit_all([f"bulk{i}" for i in range(6)]))
        singles = [asyncio.ensure_future(batcher.submit(f"s{i}")) for i in range(4 * PATIENCE + 2)]
        while batcher.pending < 1 + 6 + len(singles):
            await asyncio.sleep(0.01)
        with pytest.raises(Busy, match="at most 60"):  # 64 less the sixteenth kept for small requests
            await batcher.submit_all([f"x{i}" for i in range(64 - batcher.pending - 1)])
        small = asyncio.ensure_future(batcher.submit("small"))  # ... where a small request still gets in
        while batcher.pending < 1 + 6 + len(singles) + 1:
            await asyncio.sleep(0.01)
        run.gate.set()
        return await first, await bulk, await asyncio.gather(*singles, small)

    first, bulk, singles = run.play(scene, max_batch=4, max_pending=64)
    assert bulk == [f"bulk{i}" for i in range(6)] and singles == [f"s{i}" for i in range(4 * PATIENCE + 2)] + ["small"]
    batches = run.batches
    assert batches[0] == ["first"]
    assert batches[1:PATIENCE + 1] == [[f"s{i}" for i in range(4 * k, 4 * k + 4)] for k in range(PATIENCE)]
    assert batches[PATIENCE + 1] == ["bulk0"]  # its turn: a quarter batch, no singles added
    assert batches[PATIENCE + 2] == [f"s{4 * PATIENCE}", f"s{4 * PATIENCE + 1}", "small"]
    assert batches[PATIENCE + 3:] == [["bulk1"], ["bulk2", "bulk3", "bulk4", "bulk5"]]


def test_heavy_work_runs_at_a_lower_priority_and_decodes_large_predictions(tiny_run, predictor, monkeypatch):
    """#20 item 9: previews, heat maps and the decoding of a large image sent to /v1/predict run on
    the heavy pool, whose thread is HEAVY_NICE nice levels below the service (Linux; under SCHED_IDLE
    with HEAVY_IDLE), not in the model's batch worker."""
    import medcls.serving.app as service
    from medcls.serving.pool import thread_priority

    seen = {}
    real_preprocess, real_thumbnail = predictor.preprocess, service.load_thumbnail

    def preprocess(data):
        seen.setdefault("predict", set()).add((threading.current_thread().name, thread_priority()))
        return real_preprocess(data)

    def thumbnail(*args):
        seen.setdefault("preview", set()).add((threading.current_thread().name, thread_priority()))
        if sys.platform == "linux":
            seen["preview policy"] = os.sched_getscheduler(threading.get_native_id())
        return real_thumbnail(*args)

    monkeypatch.setattr(predictor, "preprocess", preprocess)
    monkeypatch.setattr(service, "load_thumbnail", thumbnail)
    big = png(6000)  # 36 MP: over SHRINK_ABOVE
    with served(make_app(tiny_run, predictor)) as url, httpx.Client(base_url=url, timeout=120) as c:
        assert c.post("/v1/preview", files=files(("a.png", SMALL))).status_code == 200
        small = c.post("/v1/predict", files=files(("a.png", SMALL)))
        large = c.post("/v1/predict", files=files(("big.png", big)))
        assert small.status_code == large.status_code == 200
        assert "large" in large.headers["server-timing"] and "large" not in small.headers["server-timing"]
    lower = min(19, thread_priority() + service.HEAVY_NICE) if sys.platform == "linux" else 0
    [(heavy, priority)] = seen["preview"]
    assert heavy.startswith("medcls-heavy") and priority == lower
    if sys.platform == "linux":  # and only on CPU time the service leaves
        assert seen["preview policy"] == (os.SCHED_IDLE if service.HEAVY_IDLE else os.SCHED_OTHER)
    assert {name.split("_")[0] for name, _ in seen["predict"]} == {"medcls-heavy", "medcls-batch"}
    assert {p for name, p in seen["predict"] if name.startswith("medcls-heavy")} == {lower}
    assert {p for name, p in seen["predict"] if name.startswith("medcls-batch")} == {thread_priority()}
