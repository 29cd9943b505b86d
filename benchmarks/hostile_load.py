"""The web service under hostile load on loopback: 8 normal clients post one real chest X-ray
each, request after request, first alone (quiet) and then while 30 clients send 16 images and
give up after 1 s, and 6 clients post a 78 KB 9000 x 9000 PNG to /v1/preview and /v1/heatmap.
Bounded in time (--quiet / --hostile seconds) and count (--max-requests per client).

    PYTHONPATH=src python benchmarks/hostile_load.py [--model model.pt] [--hostile 20]

Starts `medcls serve` itself (a PyTorch checkpoint: heat maps need one; default: the shipped
model) on a free 127.0.0.1 port, samples its resident memory every 50 ms, and writes
benchmarks/results/hostile_load.json. Targets (issue #20): the normal clients' p95 within 2x of
their quiet p95, no 5xx for them, server RSS under 2 GB throughout and after."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
from PIL import Image

from common import IMAGE, RESULTS, machine, percentiles
from serve_load import running_server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class MemoryWatch:
    """The server's RSS, sampled on a thread: the peak and every sample's time."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic(), rss_mb(self.pid)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, since: float = 0.0) -> float:
        return round(max((mb for t, mb in self.samples if t >= since), default=0.0), 1)


def large_png(side: int = 9000) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def form(data: bytes, name: str, n: int = 1, content_type: str = "image/jpeg") -> aiohttp.FormData:
    f = aiohttp.FormData()
    for i in range(n):
        f.add_field("file", data, filename=f"{i}-{name}", content_type=content_type)
    return f


async def normal_clients(url: str, data: bytes, clients: int, until: float, max_requests: int) -> dict:
    latencies, statuses = [], {}

    async def client() -> None:
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(60)) as c:
            for _ in range(max_requests):
                if (t0 := time.perf_counter()) >= until:
                    return
                try:
                    async with c.post("/v1/predict", data=form(data, "xray.jpeg")) as res:
                        await res.read()
                        status = res.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"clients": clients, "statuses": {str(k): v for k, v in statuses.items()},
            "latency": percentiles(latencies) if latencies else None}


async def abandoning_clients(url: str, data: bytes, clients: int, until: float, max_requests: int) -> dict:
    """Each sends 16 images and gives up after 1 s (closing the connection), again and again."""
    outcome = {"abandoned": 0}

    async def client() -> None:
        for _ in range(max_requests):
            if time.perf_counter() >= until:
                return
            try:
                async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=1)) as c:
                    async with c.post("/v1/predict", data=form(data, "xray.jpeg", 16)) as res:
                        await res.read()
                        outcome[str(res.status)] = outcome.get(str(res.status), 0) + 1
                        if res.status == 503:
                            await asyncio.sleep(float(res.headers.get("Retry-After", 1)))
            except (asyncio.TimeoutError, aiohttp.ClientError):
                outcome["abandoned"] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"clients": clients, "outcomes": outcome}


async def large_image_clients(url: str, data: bytes, clients: int, until: float, max_requests: int) -> dict:
    """Each posts the 9000 x 9000 PNG to /v1/preview and /v1/heatmap in turn."""
    outcome: dict[str, int] = {}

    async def client(k: int) -> None:
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(120)) as c:
            for i in range(max_requests):
                if time.perf_counter() >= until:
                    return
                path = ("/v1/preview", "/v1/heatmap")[(i + k) % 2]
                try:
                    async with c.post(path, data=form(data, "large.png", content_type="image/png")) as res:
                        await res.read()
                        key = f"{path} {res.status}"
                        if res.status == 503:
                            await asyncio.sleep(float(res.headers.get("Retry-After", 1)))
                except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    key = f"{path} {type(exc).__name__}"
                outcome[key] = outcome.get(key, 0) + 1

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"clients": clients, "outcomes": outcome}


async def hostile(url: str, xray: bytes, large: bytes, args) -> dict:
    until = time.perf_counter() + args.hostile
    normal, abandoning, big = await asyncio.gather(
        normal_clients(url, xray, args.clients, until, args.max_requests),
        abandoning_clients(url, xray, args.abandoning, until, args.max_requests),
        large_image_clients(url, large, args.large, until, args.max_requests))
    return {"normal": normal, "abandoning": abandoning, "large_images": big}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint or run folder (default: the shipped model)")
    parser.add_argument("--image", default=str(IMAGE))
    parser.add_argument("--clients", type=int, default=8, help="normal clients")
    parser.add_argument("--abandoning", type=int, default=30)
    parser.add_argument("--large", type=int, default=6, help="clients posting the 9000 x 9000 PNG")
    parser.add_argument("--quiet", type=float, default=10, help="seconds of normal load alone")
    parser.add_argument("--hostile", type=float, default=20, help="seconds of normal + hostile load")
    parser.add_argument("--max-requests", type=int, default=2000, help="most requests per client and phase")
    parser.add_argument("--out", default=str(RESULTS / "hostile_load.json"))
    args = parser.parse_args()

    from medcls.assets import shipped_model
    from medcls.core.io import atomic_write_json

    model = Path(args.model) if args.model else shipped_model()
    xray, large = Path(args.image).read_bytes(), large_png()
    with running_server(model, 8) as (url, pid), MemoryWatch(pid) as memory:
        idle_mb = rss_mb(pid)
        quiet = asyncio.run(normal_clients(url, xray, args.clients, time.perf_counter() + args.quiet,
                                           args.max_requests))
        started = time.monotonic()
        under_attack = asyncio.run(hostile(url, xray, large, args))
        ended = time.monotonic()
        time.sleep(3)  # what the server keeps once the load is gone
        after_mb = rss_mb(pid)
    q95, h95 = quiet["latency"]["p95_ms"], under_attack["normal"]["latency"]["p95_ms"]
    normal_5xx = sum(v for k, v in under_attack["normal"]["statuses"].items() if k.startswith("5"))
    report = {
        "benchmark": "hostile load on loopback (#20 item 9)", "model": str(model), "image": args.image,
        "large_image": f"9000x9000 grayscale PNG, {len(large)} bytes", "machine": machine(),
        "command": "PYTHONPATH=src python benchmarks/hostile_load.py " + " ".join(sys.argv[1:]),
        "quiet": quiet, "hostile": under_attack,
        "rss_mb": {"idle": round(idle_mb, 1), "peak_quiet": memory.peak(), "peak_hostile": memory.peak(started),
                   "after": round(after_mb, 1)},
        "hostile_seconds": round(ended - started, 1), "load_average_after": os.getloadavg(),
        "targets": {"normal_p95_ratio": round(h95 / q95, 2), "normal_p95_within_2x": h95 <= 2 * q95,
                    "normal_5xx": normal_5xx, "rss_under_2gb": max(memory.peak(), after_mb) < 2048},
    }
    atomic_write_json(args.out, report)
    print(f"quiet p95 {q95:.1f} ms, hostile p95 {h95:.1f} ms ({h95 / q95:.2f}x); normal 5xx {normal_5xx}; "
          f"RSS idle {idle_mb:.0f} MB, peak {memory.peak():.0f} MB, after {after_mb:.0f} MB")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
