"""Side-by-side speed of the seed CNN: medcls (PyTorch + Lightning, each speed switch)
against the same network in Keras 3 / TensorFlow, on the same images, batch size and
machine, in one invocation. Writes benchmarks/results/throughput.{json,md}.

    python benchmarks/throughput.py [--images 1024] [--size 224] [--keras-python /path/to/python]

Keras runs in a subprocess with a Python that has TensorFlow
(benchmarks/keras_reference/requirements.txt); without one its columns are empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import best_seconds, export_seed_cnn, measured_peaks, median_ms, steady
from medcls.config import load_config
from medcls.core.allocator import keep_freed_memory_environment, reuse_freed_memory
from medcls.data.prepared import make_loader, prepare_data, to_model_input
from medcls.inference.onnx_backend import load_onnx
from medcls.models import build_model
from medcls.training.module import LitClassifier
from medcls.training.train import EpochTimer
from quantize import quantize_int8

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

VARIANTS = {  # name -> config overrides (each a medcls config switch)
    "fp32 NCHW (naive)": ["train.channels_last=false", "train.precision=32", "train.reuse_memory=false",
                          "train.fuse_relu_maxpool=false", "train.fuse_first_conv=false"],
    "fp32 channels-last": ["train.channels_last=true", "train.precision=32"],
    "bf16 channels-last, glibc's default malloc": ["train.channels_last=true", "train.precision=bf16-mixed",
                                                   "train.reuse_memory=false"],
    "bf16 channels-last, unfused": ["train.channels_last=true", "train.precision=bf16-mixed",
                                    "train.fuse_relu_maxpool=false", "train.fuse_first_conv=false"],
    "bf16 channels-last, ReLU + max-pool fused": ["train.channels_last=true", "train.precision=bf16-mixed",
                                                  "train.fuse_first_conv=false"],
    "bf16 channels-last": ["train.channels_last=true", "train.precision=bf16-mixed"],
}


def cpu_peak_gflops() -> dict:
    """Peaks of this CPU: nominal (cores x GHz x FLOP/cycle) and measured (``measured_peaks``).

    AMD Zen 4 (AVX-512 with bf16, as here) issues two 256-bit FMA per cycle:
    32 fp32 FLOP/cycle/core; VDPBF16PS doubles that for bf16. The clock is the
    nominal MHz /proc/cpuinfo reports; the measured matrix products run faster than that
    "peak" because the cores boost above it, so the "% of peak" column uses the measured one."""
    mhz = 0.0
    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("cpu mhz") and not mhz:
            mhz = float(line.split(":")[1])
        if line.lower().startswith("model name"):
            model = line.split(":")[1].strip()
    cores = os.cpu_count() or 1
    measured = measured_peaks()
    return {"cpu": model, "cores": cores, "ghz": round(mhz / 1000, 3),
            "nominal_fp32": round(cores * mhz / 1000 * 32, 1), "nominal_bf16": round(cores * mhz / 1000 * 64, 1),
            "fp32": measured["gemm_fp32_gflops"], "bf16": measured["gemm_bf16_gflops"],
            "copy_gb_s": measured["copy_gb_s"]}


def train_flops_per_image(size: int) -> float:
    net = build_model("seed-cnn", 1, 2, size)
    x = torch.rand(8, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x)[:, 0].sum().backward()
    return counter.get_total_flops() / 8


def best_rate(fn, n: int, passes: int = 3) -> float:
    """Images/s of the best of ``passes`` calls of ``fn`` over ``n`` images (as the Keras script
    measures)."""
    return n / best_seconds(fn, repeats=passes, warmup=0)


def inference_only(net: torch.nn.Module, size: int, images: np.ndarray, val_images: np.ndarray,
                   how: str) -> dict:
    """Batch-32 images/s and single-image latency of ``net`` saved as a checkpoint and run as the
    Predictor runs it: ``onnx`` exported (uint8 in, logits and OOD features out) on ONNX Runtime,
    ``int8`` that file statically quantised (calibrated on ``val_images``), or ``compiled`` with
    bf16 weights by TorchInductor (``medcls predict --compile``)."""
    from medcls.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, onnx = export_seed_cnn(Path(tmp), net, size)
        if how == "compiled":
            backend = Predictor.from_checkpoint(checkpoint, compile=True).backend
        else:
            backend = load_onnx(onnx if how == "onnx" else quantize_int8(onnx, Path(tmp) / "int8.onnx", val_images),
                                batch_size=32)[0]
        backend.outputs(images[:32])  # warm-up (and compilation)
        backend.outputs(images[:1])
        infer = best_rate(lambda: backend.outputs(images), len(images))
        single = median_ms(lambda: backend.outputs(images[:1]))
    return {"infer_images_per_s": round(infer, 2), "single_latency_ms": single}


def medcls_variant(overrides: list[str], data_overrides: list[str], epochs: int) -> dict:
    cfg = load_config(HERE.parent / "configs" / "pneumonia-seed-cnn.yaml", data_overrides + overrides)
    reuse_freed_memory(cfg.train.reuse_memory)  # as train() does; the trainer below is built here
    pl.seed_everything(0, verbose=False)
    data = prepare_data(cfg.data, quiet=True)
    net = build_model("seed-cnn", 1, 2, cfg.data.image_size)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    module = LitClassifier(net, 2, cfg.train, cfg.augment, [1, 1])
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", precision=cfg.train.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, make_loader(data, "train", 32, shuffle=True), make_loader(data, "val", 32))
    # inference: batch 32 over the same images, and one image at a time
    net.eval()
    images = torch.from_numpy(np.ascontiguousarray(data.images("train")))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16-mixed")
    with torch.inference_mode(), autocast:
        net(to_model_input(images[:32], cfg.train.channels_last))
        infer = best_rate(lambda: [net(to_model_input(images[start:start + 32], cfg.train.channels_last))
                                   for start in range(0, len(images), 32)], len(images))
        single = median_ms(lambda: net(to_model_input(images[:1], cfg.train.channels_last)))
    result = {"train_images_per_s": [e["images_per_s"] for e in timer.epochs],
              "data_wait_fraction": [e["data_wait_fraction"] for e in timer.epochs],
              "infer_images_per_s": round(infer, 2), "single_latency_ms": single}
    # inference only, with the weights of this run: fp32 exported to ONNX Runtime (and int8), bf16 compiled
    if cfg.train.precision != "bf16-mixed":
        ways = {"exported, ONNX Runtime": "onnx", "exported, int8 static, ONNX Runtime": "int8"}
    elif cfg.train.reuse_memory and cfg.train.fuse_relu_maxpool and cfg.train.fuse_first_conv:
        ways = {"compiled, bf16 (predict --compile)": "compiled"}
    else:  # inference does not depend on these training switches: one compiled row, in the default variant
        ways = {}
    val = np.asarray(data.images("val"))
    calibration = val[np.random.default_rng(0).permutation(len(val))[:256]]
    result["inference_only"] = {name: inference_only(net, cfg.data.image_size, data.images("train"), calibration, how)
                                for name, how in ways.items()}
    return result


def keras_run(python: str, files: list[Path], labels: list[int], size: int, epochs: int,
              env: dict[str, str] | None = None) -> dict | None:
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as fh:
        fh.writelines(f"{p}\t{y}\n" for p, y in zip(files, labels))
    res = subprocess.run([python, str(HERE / "keras_reference" / "seed_cnn_keras.py"), fh.name,
                          "--size", str(size), "--epochs", str(epochs)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    os.unlink(fh.name)
    if res.returncode != 0:
        print(f"keras run failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray"))
    ap.add_argument("--images", type=int, default=1024, help="training images per epoch (balanced subset)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--keras-python", default=os.environ.get("KERAS_PYTHON", sys.executable))
    args = ap.parse_args()
    data_overrides = [f"data.root={args.data}", f"data.image_size={args.size}",
                      f"data.limit_per_class={args.images // 2}", "augment.enabled=true"]
    results: dict = {"machine": cpu_peak_gflops(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "images_per_epoch": args.images, "size": args.size, "batch": 32,
                     "train_gflop_per_image": round(train_flops_per_image(args.size) / 1e9, 3), "medcls": {}}
    for name, overrides in VARIANTS.items():
        print(f"medcls {name} ...", file=sys.stderr)
        results["medcls"][name] = medcls_variant(overrides, data_overrides, args.epochs)
    cfg = load_config(None, data_overrides)
    data = prepare_data(cfg.data, quiet=True)
    print("keras ...", file=sys.stderr)
    results["keras"] = keras_run(args.keras_python, data.paths("train"), data.labels["train"].tolist(),
                                 args.size, args.epochs)
    # the same allocator settings for Keras: how much of the lead they would give TensorFlow too
    print("keras, medcls' malloc settings ...", file=sys.stderr)
    results["keras_same_malloc"] = keras_run(args.keras_python, data.paths("train"), data.labels["train"].tolist(),
                                             args.size, args.epochs, keep_freed_memory_environment())
    write(results)


def write(results: dict) -> None:
    peak = results["machine"]
    gflop = results["train_gflop_per_image"]
    keras = results["keras"]
    lines = [f"# Seed CNN throughput, {results['size']} px, batch {results['batch']}",
             "", f"CPU: {peak['cpu']}, {peak['cores']} cores at {peak['ghz']} GHz (nominal). Peak: measured "
             f"{peak['fp32']} GFLOP/s fp32 and {peak['bf16']} GFLOP/s bf16 (4096 x 4096 matrix products; the nominal "
             f"cores x GHz x 32 or 64 FLOP/cycle, {peak['nominal_fp32']} and {peak['nominal_bf16']}, is lower: the cores "
             f"boost above the nominal clock); memory copy {peak['copy_gb_s']} GB/s. Training costs {gflop} GFLOP/image "
             "(forward + backward, counted by torch's FlopCounterMode).", "",
             "| run | train img/s | x Keras | GFLOP/s (% of peak) | data wait | infer img/s (b32) | x Keras "
             "| 1-image ms |", "|---|---|---|---|---|---|---|---|"]
    rows = {}
    for name, r in results["medcls"].items():
        rows[name] = r
        for how, row in r.get("inference_only", {}).items():  # the weights of the run above
            rows[f"{name}, {how}"] = row
    if keras:
        rows["Keras 3 / TF (reference)"] = keras
    if results.get("keras_same_malloc"):
        rows["Keras 3 / TF, medcls' malloc settings"] = results["keras_same_malloc"]
    for name, r in rows.items():
        kt = steady(keras["train_images_per_s"]) if keras else None
        peak_key = "bf16" if "bf16" in name else "fp32"
        wait = f"{np.mean(r['data_wait_fraction']):.1%}" if "data_wait_fraction" in r else ""
        if "train_images_per_s" not in r:
            lines.append(f"| {name} | | | |")
        else:
            train = steady(r["train_images_per_s"])
            lines.append(f"| {name} | {train:.1f} | {train / kt:.2f} |" if kt else f"| {name} | {train:.1f} | |")
            lines[-1] += f" {train * gflop:.0f} ({train * gflop / peak[peak_key]:.0%}) |"
        infer = r["infer_images_per_s"]
        ratio = f"{infer / keras['infer_images_per_s']:.2f}" if keras else ""
        lines[-1] += f" {wait} | {infer:.1f} | {ratio} | {r['single_latency_ms']:.2f} |"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
