"""In-process, single-image, end-to-end latency: image bytes in -> JSON-able
prediction row out (decode, resize, model, calibration, threshold, JSON), through
ONNX Runtime, PyTorch and PyTorch compiled (bf16, ``--compile``), one image at a time.

    PYTHONPATH=src python benchmarks/latency.py [--model model.pt] [--repeats 300]

Writes benchmarks/results/latency.json. Target: ONNX Runtime p50 <= 15 ms."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import IMAGE, RESULTS, benchmark_model, machine, percentiles


def measure(predictor, data: bytes, repeats: int, warmup: int) -> dict:
    """Wall-clock times, and the process's CPU time (all threads) per image, which
    a busy shared machine inflates far less than the wall clock."""
    total, cpu, decode = [], [], []
    for i in range(warmup + repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        rows, _ = predictor.predict([data], names=["image"])
        json.dumps(rows[0].row())
        t1, c1 = time.perf_counter(), time.process_time()
        predictor.preprocess(data)
        t2 = time.perf_counter()
        if i >= warmup:
            total.append((t1 - t0) * 1000)
            cpu.append((c1 - c0) * 1000)
            decode.append((t2 - t1) * 1000)
    return {"end_to_end": percentiles(total), "cpu_time_per_image": percentiles(cpu),
            "decode_and_resize": percentiles(decode)}


def batch_cost(predictor, data: bytes, sizes=(1, 8), images_per_round: int = 24, rounds: int = 3) -> dict:
    """Model-only wall and CPU time per image, for images run one by one or in
    batches (rounds interleaved, medians reported): the evidence behind the
    service's batching choice per backend."""
    import numpy as np

    batches = {size: np.repeat(predictor.preprocess(data)[None], size, axis=0) for size in sizes}
    for images in batches.values():
        for _ in range(3):
            predictor.logits(images)
    wall: dict[int, list[float]] = {size: [] for size in sizes}
    cpu: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size, images in batches.items():
            calls = images_per_round // size
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                predictor.logits(images)
            wall[size].append((time.perf_counter() - t0) / (calls * size) * 1000)
            cpu[size].append((time.process_time() - c0) / (calls * size) * 1000)
    return {f"batch_{size}": {"wall_ms_per_image": round(float(np.median(wall[size])), 3),
                              "cpu_ms_per_image": round(float(np.median(cpu[size])), 3)} for size in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint or run folder (default: a random 224 px seed CNN)")
    parser.add_argument("--image", default=str(IMAGE))
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS / "latency.json"))
    args = parser.parse_args()

    from medcls.core.io import atomic_write_json
    from medcls.inference.predictor import Predictor

    data = Path(args.image).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, onnx, description = benchmark_model(args.model, Path(tmp))
        results = {}
        for name, path, compile in (("onnxruntime", onnx, False), ("pytorch", checkpoint, False),
                                    ("pytorch-compiled", checkpoint, True)):
            predictor = Predictor.load(path, compile=compile)
            results[name] = {**measure(predictor, data, args.repeats, args.warmup),
                             "model_only": batch_cost(predictor, data)}
    report = {"benchmark": "single-image end-to-end latency, in process", "model": description,
              "image": str(args.image), "image_bytes": len(data), "machine": machine(),
              "load_average_after": os.getloadavg(),
              "command": "PYTHONPATH=src python benchmarks/latency.py " + " ".join(sys.argv[1:]),
              "target": {"onnxruntime_p50_ms": 15}, "results": results}
    atomic_write_json(args.out, report)
    for name, r in results.items():
        e = r["end_to_end"]
        print(f"{name:12s} p50 {e['p50_ms']:.2f} ms  p95 {e['p95_ms']:.2f} ms  CPU time p50 "
              f"{r['cpu_time_per_image']['p50_ms']:.2f} ms  (decode+resize p50 {r['decode_and_resize']['p50_ms']:.2f} ms)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
