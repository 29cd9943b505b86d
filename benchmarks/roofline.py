"""Where a training step of the seed CNN goes on this CPU, and the ceiling that puts on
its training speed. Writes benchmarks/results/roofline.{json,md}.

    python benchmarks/roofline.py [--size 224] [--batch 32]

1. The CPU's achievable peaks, measured: a large matrix product in fp32 and in bf16
   (oneDNN / MKL at their best) and the memory copy bandwidth.
2. One bf16 channels-last training step (as ``train.precision=bf16-mixed``,
   ``train.channels_last=true`` train it), without data loading: its wall time with
   glibc's default malloc and with freed memory kept (``train.reuse_memory``), and the
   profiler's split of the latter by kind of work (convolution forward and backward, ReLU,
   max-pool, the dense layers, the optimiser), with the rate of each convolution.
3. The same step compiled by TorchInductor (``torch.compile``), the engine's own answer
   to the memory-bound ReLU and pool work.
4. The ceiling: the step's convolutions alone, at the rates measured, against the step time
   that 2x the Keras training speed in ``results/throughput.json`` allows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from common import RESULTS, best_seconds, machine, measured_peaks

from medcls.allocator import reuse_freed_memory
from medcls.models import build_model

KINDS = {  # profiler op -> kind of work (self time; everything else is "other")
    "aten::mkldnn_convolution": "convolution forward",
    "aten::convolution_backward": "convolution backward",
    "aten::clamp_min_": "ReLU", "aten::relu_": "ReLU", "aten::threshold_backward": "ReLU",
    "aten::max_pool2d_with_indices": "max-pool", "aten::max_pool2d_with_indices_backward": "max-pool",
    "aten::fill_": "max-pool",  # zeroing the pool's input gradient before the scatter
    "aten::addmm": "dense layers", "aten::mm": "dense layers",
}


def training_step(size: int, batch: int, compiled: bool = False):
    """A bf16 channels-last training step of a fresh grayscale seed CNN on random images."""
    torch.manual_seed(0)
    net = build_model("seed-cnn", 1, 2, size).to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compiled else net
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        with torch.autocast("cpu", torch.bfloat16):
            logits = forward(x)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def conv_flops(size: int, batch: int) -> list[dict]:
    """Input side, channels and forward GFLOP of each convolution of the seed CNN."""
    convs, side = [], size
    net = build_model("seed-cnn", 1, 2, size)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            out = side - m.kernel_size[0] + 1
            convs.append({"in": m.in_channels, "out": m.out_channels, "side": side,
                          "gflop": 2 * batch * m.out_channels * m.in_channels * m.kernel_size[0] ** 2 * out ** 2 / 1e9})
            side = out // 2
    return convs


def breakdown(step, size: int, batch: int, steps: int = 3) -> dict:
    """Milliseconds per step by kind of work, and each convolution's forward and backward rate."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    kinds: dict[str, float] = {}
    total = 0.0
    conv_ms: dict[tuple[str, int], float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        ms = event.self_cpu_time_total / 1000 / steps
        total += ms
        kind = KINDS.get(event.key, "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
        if event.key in ("aten::mkldnn_convolution", "aten::convolution_backward"):
            # the input's channels (2nd dim of the first tensor argument whose 4-d shape is the layer's input)
            shape = event.input_shapes[0] if event.key == "aten::mkldnn_convolution" else event.input_shapes[1]
            conv_ms[(event.key, shape[1], shape[2])] = ms
    layers = []
    for conv in conv_flops(size, batch):
        fwd = conv_ms.get(("aten::mkldnn_convolution", conv["in"], conv["side"]), 0.0)
        bwd = conv_ms.get(("aten::convolution_backward", conv["in"], conv["side"]), 0.0)
        # backward: the weight gradient, plus the input gradient except for the first layer
        bwd_gflop = conv["gflop"] * (2 if conv["in"] > 1 else 1)
        layers.append({**{k: conv[k] for k in ("in", "out", "side")}, "forward_ms": round(fwd, 2),
                       "backward_ms": round(bwd, 2),
                       "forward_gflops": round(conv["gflop"] / fwd * 1000, 1) if fwd else None,
                       "backward_gflops": round(bwd_gflop / bwd * 1000, 1) if bwd else None})
    return {"profiled_ms": round(total, 1), "kinds_ms": {k: round(v, 1) for k, v in sorted(kinds.items())},
            "convolutions": layers}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    peaks = measured_peaks()
    reuse_freed_memory(False)
    default_malloc_s = best_seconds(training_step(args.size, args.batch), repeats=8)
    reuse_freed_memory(True)  # as medcls trains (train.reuse_memory)
    eager = training_step(args.size, args.batch)
    eager_s = best_seconds(eager, repeats=8)
    split = breakdown(eager, args.size, args.batch)
    compiled_s = best_seconds(training_step(args.size, args.batch, compiled=True), repeats=8, warmup=3)
    # the profiler's times run longer than an unprofiled step: shares of the profile, scaled to the step's wall time
    scale = eager_s * 1000 / split["profiled_ms"]
    conv_ms = scale * sum(c["forward_ms"] + c["backward_ms"] for c in split["convolutions"])
    memory_bound_ms = scale * (split["kinds_ms"].get("max-pool", 0.0) + split["kinds_ms"].get("ReLU", 0.0))
    # all but the first: the first layer's convolution is bound by writing its 32 x 222 x 222 output, not by FLOPs
    deep = split["convolutions"][1:]
    deep_gflop = sum(c["forward_ms"] * c["forward_gflops"] + c["backward_ms"] * c["backward_gflops"] for c in deep) / 1000
    deep_ms = sum(c["forward_ms"] + c["backward_ms"] for c in deep)
    throughput = json.loads((args.out / "throughput.json").read_text()) if (args.out / "throughput.json").exists() else {}
    keras = throughput.get("keras") or {}
    rates = keras.get("train_images_per_s", [0.0])
    keras_rate = round(statistics.median(rates[1:] or rates), 2)  # after the decoding epoch, as throughput.md
    report = {
        "machine": machine(), "size": args.size, "batch": args.batch, "peaks": peaks,
        "default_malloc_step_ms": round(default_malloc_s * 1000, 1),
        "default_malloc_images_per_s": round(args.batch / default_malloc_s, 1),
        "eager_step_ms": round(eager_s * 1000, 1), "eager_images_per_s": round(args.batch / eager_s, 1),
        "compiled_step_ms": round(compiled_s * 1000, 1), "compiled_images_per_s": round(args.batch / compiled_s, 1),
        **split,
        "ceiling": {
            "convolutions_ms": round(conv_ms, 1),
            "convolutions_only_images_per_s": round(args.batch / conv_ms * 1000, 1),
            "max_pool_and_relu_ms": round(memory_bound_ms, 1),
            "layers_2_on_gflops": round(deep_gflop / deep_ms * 1000, 1),
            "layers_2_on_share_of_gemm_bf16": round(deep_gflop / deep_ms * 1000 / peaks["gemm_bf16_gflops"], 3),
            "keras_train_images_per_s": keras_rate,
            "step_ms_for_2x_keras": round(args.batch / (2 * keras_rate) * 1000, 1) if keras_rate else None,
        },
        "command": "python benchmarks/roofline.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roofline.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "roofline.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    p, c = r["peaks"], r["ceiling"]
    lines = [f"# Where a seed CNN training step goes ({r['size']} px, batch {r['batch']}, bf16 channels-last)", "",
             f"Measured peaks on this machine ({r['machine']['cpus']} CPUs, {r['machine']['torch_threads']} threads): "
             f"matrix product {p['gemm_fp32_gflops']} GFLOP/s fp32, {p['gemm_bf16_gflops']} GFLOP/s bf16; "
             f"memory copy {p['copy_gb_s']} GB/s.", "",
             "Training step without data loading, best of 8:", "",
             "| step | ms | images/s |", "|---|---:|---:|",
             f"| eager, glibc's default malloc (each large tensor a fresh mapping, page-faulted in) | "
             f"{r['default_malloc_step_ms']} | {r['default_malloc_images_per_s']} |",
             f"| eager, freed memory kept (`train.reuse_memory`, medcls' default) | {r['eager_step_ms']} | "
             f"{r['eager_images_per_s']} |",
             f"| compiled by TorchInductor (`torch.compile`), freed memory kept | {r['compiled_step_ms']} | "
             f"{r['compiled_images_per_s']} |", "",
             "The rest of this page is the eager step with freed memory kept.", "",
             f"## Eager step by kind of work (profiler self time, {r['profiled_ms']} ms per step)", "",
             "| work | ms per step | share |", "|---|---:|---:|"]
    for kind, ms in sorted(r["kinds_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms} | {ms / r['profiled_ms']:.0%} |")
    lines += ["", "| convolution | forward ms | GFLOP/s | backward ms | GFLOP/s |", "|---|---:|---:|---:|---:|"]
    for conv in r["convolutions"]:
        lines.append(f"| {conv['in']} -> {conv['out']} at {conv['side']} px | {conv['forward_ms']} | "
                     f"{conv['forward_gflops']} | {conv['backward_ms']} | {conv['backward_gflops']} |")
    lines += ["", "## Ceiling", "",
              f"Shares of the profile applied to the unprofiled step ({r['eager_step_ms']} ms):", "",
              f"- The convolutions take {c['convolutions_ms']} ms per step: "
              f"{c['convolutions_only_images_per_s']} images/s if nothing else cost anything.",
              f"- Layers 2-5 already run at {c['layers_2_on_gflops']} GFLOP/s, "
              f"{c['layers_2_on_share_of_gemm_bf16']:.0%} of the bf16 matrix-product peak (profiled times).",
              f"- Max-pool and ReLU take {c['max_pool_and_relu_ms']} ms: memory-bound work that PyTorch's kernels "
              f"run far below the copy bandwidth ({p['copy_gb_s']} GB/s)."]
    if c["step_ms_for_2x_keras"]:
        lines.append(f"- 2x Keras ({c['keras_train_images_per_s']} images/s end to end, `results/throughput.json`) "
                     f"allows {c['step_ms_for_2x_keras']} ms per step, data loading included: "
                     f"{c['step_ms_for_2x_keras'] - c['convolutions_ms']:.0f} ms beside the convolutions.")
    lines += ["", f"Reproduce: `PYTHONPATH=src {r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
