"""The web service under hostile load on loopback: 8 normal clients post one real chest X-ray
each, request after request, first alone (quiet) and then while 30 clients send 16 images and
give up after 1 s, and 6 clients post a 78 KB 9000 x 9000 PNG to /v1/preview and /v1/heatmap.
Bounded in time (--quiet / --hostile seconds) and count (--max-requests per client).

    PYTHONPATH=src python benchmarks/hostile_load.py [--model model.pt] [--hostile 20]

Starts `medcls serve` itself (a PyTorch checkpoint: heat maps need one; default: the shipped
model) on a free 127.0.0.1 port, samples its resident memory every 50 ms, and writes
benchmarks/results/hostile_load.json: latencies, the server's stages for them (its
``Server-Timing``: read, wait, decode, model with the batch sizes, heavy-pool work), its CPU
seconds by thread priority (the heavy pool runs at a lower one) and the machine's load average
before, between and after the phases. Run it niced on a shared machine (`nice -n 10`): the two
phases of one run are measured side by side, compare their ratio. Targets (issue #20): the normal
clients' p95 within 2x of their quiet p95, no 5xx for them, server RSS under 2 GB throughout and after."""

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
from medcls.serving.timing import parse_server_timing
from serve_load import running_server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(pid: int) -> dict[int, tuple[int, float]]:
    """{thread id: (nice value, CPU seconds so far)} of a process's threads (Linux /proc)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        threads[int(task.name)] = (int(fields[16]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return threads


def cpu_by_priority(before: dict, after: dict, seconds: float) -> dict:
    """CPU seconds the server's threads used between two :func:`thread_cpu` samples, by nice value
    (the heavy pool's threads and those they started run at a lower priority), and in all per second."""
    used: dict[str, float] = {}
    for tid, (nice, cpu) in after.items():
        used[f"nice {nice}"] = used.get(f"nice {nice}", 0.0) + cpu - before.get(tid, (nice, 0.0))[1]
    return {**{k: round(v, 1) for k, v in sorted(used.items())},
            "cores_busy": round(sum(used.values()) / seconds, 2)}


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


def stage_summary(timings: list[dict[str, tuple[float, str | None]]], latencies: list[float]) -> dict:
    """Per stage of the server's ``Server-Timing`` (and ``outside``: the client's latency less the
    stages, i.e. HTTP, the event loop and the middlewares): p50, p95, mean in ms; batch sizes seen."""
    names = list(dict.fromkeys(name for t in timings for name in t))
    stages = {name: [t.get(name, (0.0, None))[0] for t in timings] for name in names}
    stages["outside"] = [ms - sum(v for v, _ in t.values()) for t, ms in zip(timings, latencies)]
    out = {name: {k: v for k, v in percentiles(ms).items() if k in ("p50_ms", "p95_ms", "mean_ms")}
           for name, ms in stages.items()}
    sizes = [int(n) for t in timings if t.get("model", (0, None))[1] for n in t["model"][1].split("+")]
    if sizes:
        out["model"]["batch_sizes"] = {str(n): sizes.count(n) for n in sorted(set(sizes))}
    return out


async def normal_clients(url: str, data: bytes, clients: int, until: float, max_requests: int) -> dict:
    latencies, statuses, timings = [], {}, []

    async def client() -> None:
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(60)) as c:
            for _ in range(max_requests):
                if (t0 := time.perf_counter()) >= until:
                    return
                try:
                    async with c.post("/v1/predict", data=form(data, "xray.jpeg")) as res:
                        await res.read()
                        status = res.status
                        stages = parse_server_timing(res.headers.get("Server-Timing", ""))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    timings.append(stages)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"clients": clients, "statuses": {str(k): v for k, v in statuses.items()},
            "latency": percentiles(latencies) if latencies else None,
            "stages": stage_summary(timings, latencies) if latencies else None}


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
    stages: dict[str, list[float]] = {}

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
                        for name, (ms, _) in parse_server_timing(res.headers.get("Server-Timing", "")).items():
                            stages.setdefault(f"{path} {name}", []).append(ms)
                        if res.status == 503:
                            await asyncio.sleep(float(res.headers.get("Retry-After", 1)))
                except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    key = f"{path} {type(exc).__name__}"
                outcome[key] = outcome.get(key, 0) + 1

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"clients": clients, "outcomes": outcome,
            "stages": {name: {k: v for k, v in percentiles(ms).items() if k in ("n", "p50_ms", "mean_ms")}
                       for name, ms in stages.items()}}


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
    xray, large, load_before = Path(args.image).read_bytes(), large_png(), os.getloadavg()
    with running_server(model, 8) as (url, pid), MemoryWatch(pid) as memory:
        idle_mb, cpu_before, quiet_started = rss_mb(pid), thread_cpu(pid), time.monotonic()
        quiet = asyncio.run(normal_clients(url, xray, args.clients, time.perf_counter() + args.quiet,
                                           args.max_requests))
        started, cpu_quiet, load_quiet = time.monotonic(), thread_cpu(pid), os.getloadavg()
        under_attack = asyncio.run(hostile(url, xray, large, args))
        ended, cpu_hostile = time.monotonic(), thread_cpu(pid)
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
        "server_cpu_seconds": {"quiet": cpu_by_priority(cpu_before, cpu_quiet, started - quiet_started),
                               "hostile": cpu_by_priority(cpu_quiet, cpu_hostile, ended - started)},
        "hostile_seconds": round(ended - started, 1), "load_average_before": load_before,
        "load_average_after_quiet": load_quiet,
        "load_average_after": os.getloadavg(),
        "targets": {"normal_p95_ratio": round(h95 / q95, 2), "normal_p95_within_2x": h95 <= 2 * q95,
                    "normal_5xx": normal_5xx, "rss_under_2gb": max(memory.peak(), after_mb) < 2048},
    }
    atomic_write_json(args.out, report)
    print(f"quiet p95 {q95:.1f} ms, hostile p95 {h95:.1f} ms ({h95 / q95:.2f}x); normal 5xx {normal_5xx}; "
          f"RSS idle {idle_mb:.0f} MB, peak {memory.peak():.0f} MB, after {after_mb:.0f} MB")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
