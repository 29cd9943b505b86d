"""Load test of the web service on loopback: N concurrent clients post one real
chest X-ray each, request after request, for a bounded time; reports throughput,
p50/p95/p99 latency and the error count, with batching of concurrent requests
on (--max-batch 8) and off (1), for the ONNX Runtime, PyTorch or compiled PyTorch (bf16) backend.

    PYTHONPATH=src python benchmarks/serve_load.py [--model model.pt] [--clients 8] [--backend pytorch-compiled]

Starts `medcls serve` itself on a free 127.0.0.1 port and stops it at the end.
Writes benchmarks/results/serve_load.json (serve_load_BACKEND.json for the others). Target:
p95 <= 50 ms at 8 concurrent clients, zero errors. A Prometheus-like scraper reads /metrics once a
second during the load (scrapes and scrape errors are reported)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx

from common import IMAGE, RESULTS, ROOT, benchmark_model, machine, percentiles


@contextmanager
def running_server(model: Path, max_batch: int, compile: bool = False):
    """`medcls serve` on a free loopback port; yields its URL and process id, stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "medcls.cli", "serve", "--model", str(model), "--port", str(port),
                             "--max-batch", str(max_batch), *(["--compile"] if compile else [])],
                            env=env, stdout=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"medcls serve exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("medcls serve did not start within 120 s") from None
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, data: bytes, clients: int, duration: float, warmup: float) -> dict:
    """``clients`` loops posting ``data``; requests started during ``warmup`` are not counted."""
    latencies, server_ms, errors = [], [], []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client() -> None:
        # aiohttp: a third of httpx's CPU per request, which the 2 cores' server would otherwise lose.
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(30)) as c:
            while (t0 := time.perf_counter()) < stop_at:
                form = aiohttp.FormData()
                form.add_field("file", data, filename="xray.jpeg", content_type="image/jpeg")
                try:
                    async with c.post("/v1/predict", data=form) as res:
                        ok, body = res.status == 200, await res.read()
                    detail = None if ok else f"{res.status} {body[:200]!r}"
                except aiohttp.ClientError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if t0 >= measure_from:
                    if ok:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        server_ms.append(json.loads(body)["predictions"][0]["latency_ms"])
                    else:
                        errors.append(detail)

    scrapes, scrape_errors = [], []

    async def prometheus() -> None:
        """Scrapes /metrics once a second during the load, as a Prometheus server would."""
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(30)) as c:
            while time.perf_counter() < stop_at:
                try:
                    async with c.get("/metrics") as res:
                        text = await res.text()
                    (scrapes if res.status == 200 and "medcls_requests_total" in text else scrape_errors).append(
                        text if res.status == 200 else f"{res.status}")
                except aiohttp.ClientError as exc:
                    scrape_errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    await asyncio.gather(prometheus(), *(client() for _ in range(clients)))
    predicted = [float(line.rsplit(" ", 1)[1]) for line in (scrapes[-1] if scrapes else "").splitlines()
                 if line.startswith('medcls_requests_total{endpoint="/v1/predict",status="200"}')]
    return {"metrics_scrapes": len(scrapes), "metrics_scrape_errors": len(scrape_errors),
            "metrics_predict_200_at_last_scrape": predicted[0] if predicted else None,
            "clients": clients, "duration_s": duration, "requests": len(latencies) + len(errors),
            "errors": len(errors), "first_errors": errors[:5],
            "throughput_rps": round(len(latencies) / duration, 1), "latency": percentiles(latencies),
            "server_latency": percentiles(server_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint or run folder (default: a random 224 px seed CNN)")
    parser.add_argument("--image", default=str(IMAGE))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8, 1, 8],
                        help="server batch limits to compare, run in this order (alternating evens out load drift)")
    parser.add_argument("--backend", choices=["onnxruntime", "pytorch", "pytorch-compiled"], default="onnxruntime",
                        help="serve the exported ONNX file, the checkpoint, or the checkpoint with --compile")
    parser.add_argument("--out", help="default: benchmarks/results/serve_load.json (serve_load_BACKEND.json)")
    args = parser.parse_args()

    from medcls.core.io import atomic_write_json

    data = Path(args.image).read_bytes()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, onnx, description = benchmark_model(args.model, Path(tmp))
        model = onnx if args.backend == "onnxruntime" else checkpoint
        for max_batch in args.max_batch:
            with running_server(model, max_batch, args.backend == "pytorch-compiled") as (url, pid):
                server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
                r = asyncio.run(load(url, data, args.clients, args.duration, args.warmup))
                # CPU cost per request, warm-up included: unlike latency, a busy machine hardly changes it.
                done = r["requests"] * (args.duration + args.warmup) / args.duration
                r["server_cpu_ms_per_request"] = round((cpu_seconds(pid) - server_cpu) / done * 1000, 2)
                r["client_cpu_ms_per_request"] = round((time.process_time() - client_cpu) / done * 1000, 2)
                runs.append({"max_batch": max_batch, **r})
            print(f"max_batch={max_batch}: {r['throughput_rps']} req/s, p50 {r['latency']['p50_ms']:.1f} ms, "
                  f"p95 {r['latency']['p95_ms']:.1f} ms, p99 {r['latency']['p99_ms']:.1f} ms, {r['errors']} errors; "
                  f"/metrics scraped {r['metrics_scrapes']} times, {r['metrics_scrape_errors']} errors; "
                  f"CPU per request: server {r['server_cpu_ms_per_request']} ms, "
                  f"client {r['client_cpu_ms_per_request']} ms")
    out = args.out or RESULTS / ("serve_load.json" if args.backend == "onnxruntime" else f"serve_load_{args.backend}.json")
    report = {"benchmark": f"service load on loopback ({args.backend} backend)", "model": description,
              "image": str(args.image), "machine": machine(), "load_average_after": os.getloadavg(),
              "command": "PYTHONPATH=src python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
              "target": {"clients": 8, "p95_ms": 50, "errors": 0}, "runs": runs}
    atomic_write_json(out, report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
