"""Shared by the benchmarks: the model to measure and the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "chest_xray" / "test" / "PNEUMONIA" / "person1_virus_6.jpeg"
RESULTS = ROOT / "benchmarks" / "results"


def benchmark_model(model: str | None, workdir: Path) -> tuple[Path, Path, str]:
    """(checkpoint, exported ONNX, description): ``model`` if given, else a randomly
    initialised 224 px grayscale seed CNN (the faithful recipe's network; latency
    does not depend on the weights)."""
    from medcls.inference.export import export_onnx

    if model:
        checkpoint = Path(model)
        return checkpoint, export_onnx(checkpoint, workdir / "model.onnx").path, f"checkpoint {checkpoint}"
    return (*export_seed_cnn(workdir), "seed-cnn, 224 px grayscale, randomly initialised (latency only)")


def export_seed_cnn(workdir: Path, net=None, size: int = 224) -> tuple[Path, Path]:
    """(checkpoint, exported ONNX) in ``workdir`` of a grayscale seed CNN: ``net`` (an
    ImageClassifier, e.g. just trained), or a randomly initialised one (seed 0)."""
    import torch

    from medcls.inference.export import export_onnx
    from medcls.models.checkpoint import ModelInfo, build_net, save_checkpoint

    mean, std = (net.mean.flatten().tolist(), net.std.flatten().tolist()) if net is not None else ([0.5], [0.25])
    info = ModelInfo(arch="seed-cnn", arch_kwargs={}, classes=["NORMAL", "PNEUMONIA"], image_size=size,
                     color_mode="grayscale", mean=mean, std=std, positive_class="PNEUMONIA")
    if net is None:
        torch.manual_seed(0)
        net = build_net(info)
    checkpoint = save_checkpoint(workdir / "model.pt", net.to(memory_format=torch.contiguous_format), info)
    return checkpoint, export_onnx(checkpoint, workdir / "model.onnx").path


def median_ms(fn, repeats: int = 50) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds."""
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


def machine() -> dict:
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__}


def percentiles(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3),
            "min_ms": round(float(a.min()), 3)}


def best_seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    """The fastest of ``repeats`` calls: the machine's noise only ever slows a call down."""
    import time

    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measured_peaks(n: int = 4096) -> dict:
    """GFLOP/s of an ``n`` x ``n`` matrix product in fp32 and bf16, and GB/s of a 512 MB copy."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        peaks[f"gemm_{name}_gflops"] = round(2 * n ** 3 / best_seconds(lambda: a @ b) / 1e9, 1)
    src = torch.ones(128 * 2 ** 20)  # 512 MB of fp32
    dst = torch.empty_like(src)
    peaks["copy_gb_s"] = round(2 * src.nbytes / best_seconds(lambda: dst.copy_(src)) / 1e9, 1)
    return peaks


def steady(rates: list[float]) -> float:
    """Training images/s after the first epoch (which also decodes), or the only epoch."""
    import statistics

    return float(statistics.median(rates[1:] if len(rates) > 1 else rates))


def write_json(out: Path, name: str, result: dict) -> dict:
    """``out/NAME.json`` (the folder made if needed), also printed; returns ``result``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def write_results(name: str, result: dict, markdown: str) -> None:
    """``benchmarks/results/NAME.json`` and ``NAME.md``; the Markdown is printed too."""
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
