"""Where a training step of the seed CNN goes on this CPU, and the ceiling that puts on
its training speed. Writes benchmarks/results/roofline.{json,md}.

    python benchmarks/roofline.py [--size 224] [--batch 32]

1. The CPU's achievable peaks, measured: a large matrix product in fp32 and in bf16
   (oneDNN / MKL at their best) and the memory copy bandwidth.
2. One bf16 channels-last training step (as ``train.precision=bf16-mixed``,
   ``train.channels_last=true`` train it), without data loading: its wall time with
   glibc's default malloc, with freed memory kept (``train.reuse_memory``), with medcls'
   fused kernels too (``train.fuse_relu_maxpool``, ``train.fuse_first_conv``), and compiled
   by TorchInductor (``torch.compile``), the engine's own answer to memory-bound work.
3. Each layer's parts timed on their own, in bf16 channels-last with freed memory kept:
   convolution forward and backward (with its GFLOP/s), ReLU and max-pool forward + backward,
   and the fused kernel that replaces them (the first layer's takes its convolution too).
4. The ceiling: 2x the Keras training speed in ``results/throughput.json`` allows a time
   per step; against it, medcls' step end to end (data loading and Lightning included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common import RESULTS, best_seconds, machine, measured_peaks, steady
from medcls.core.allocator import reuse_freed_memory
from medcls.models import build_model
from medcls.models.fused import ConvReLUMaxPool2d, fused_layers, relu_maxpool2d


def training_step(size: int, batch: int, compiled: bool = False, fused: bool = False):
    """A bf16 channels-last training step of a fresh grayscale seed CNN on random images."""
    torch.manual_seed(0)
    net = build_model("seed-cnn", 1, 2, size).to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compiled else net
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        with torch.autocast("cpu", torch.bfloat16), fused_layers(net, fused, fused):
            logits = forward(x)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def layer_costs(size: int, batch: int, dtype=torch.bfloat16) -> list[dict]:
    """Milliseconds of each stage of the seed CNN, timed on its own at its own input shape:
    convolution forward and backward (weight gradient, and input gradient except for the
    first layer), ReLU forward + backward, 2x2 max-pool forward + backward, and the fused
    kernel that replaces them (for the first layer, convolution + ReLU + max-pool)."""
    net = build_model("seed-cnn", 1, 2, size).backbone
    rows, side = [], size
    for conv in (m for m in net if isinstance(m, torch.nn.Conv2d)):
        conv = conv.to(dtype).to(memory_format=torch.channels_last)
        x = torch.randn(batch, conv.in_channels, side, side, dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_(conv.in_channels > 1)  # the network's input needs no gradient
        y = conv(x)
        g = torch.randn_like(y)
        wrt = [x, conv.weight] if x.requires_grad else [conv.weight]
        forward = best_seconds(lambda: conv(x), repeats=7)
        both = best_seconds(lambda: torch.autograd.grad(conv(x), wrt, g), repeats=7)
        act = y.detach().clone().requires_grad_()
        copy = best_seconds(lambda: act.clone(), repeats=7)  # ReLU runs in place on the convolution's output
        relu = best_seconds(lambda: torch.autograd.grad(F.relu(act.clone()), act, g), repeats=7) - copy
        pooled = F.max_pool2d(y.detach(), 2)
        pool = best_seconds(lambda: torch.autograd.grad(F.max_pool2d(act, 2), act, torch.ones_like(pooled)),
                            repeats=7)
        if x.requires_grad:
            fused = best_seconds(lambda: torch.autograd.grad(relu_maxpool2d(act), act, torch.ones_like(pooled)),
                                 repeats=7)
        else:  # the fused first layer, as autocast runs it: float32 image and weights in
            first = ConvReLUMaxPool2d(torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3))
            image = x.detach().float()

            def fused_first():
                with torch.autocast("cpu", torch.bfloat16):
                    out = first(image)
                torch.autograd.grad(out, list(first.parameters()), torch.ones_like(out))
            fused = best_seconds(fused_first, repeats=7)
        out = side - 2
        gflop = 2 * batch * conv.out_channels * conv.in_channels * 9 * out ** 2 / 1e9
        backward_gflop = gflop * (2 if x.requires_grad else 1)
        rows.append({"in": conv.in_channels, "out": conv.out_channels, "side": side,
                     "forward_ms": round(forward * 1000, 2), "backward_ms": round((both - forward) * 1000, 2),
                     "forward_gflops": round(gflop / forward, 1),
                     "backward_gflops": round(backward_gflop / (both - forward), 1),
                     "relu_ms": round(relu * 1000, 2), "max_pool_ms": round(pool * 1000, 2),
                     "fused_ms": round(fused * 1000, 2), "fused_has_convolution": not x.requires_grad})
        side = out // 2
    return rows


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
    eager_s = best_seconds(training_step(args.size, args.batch), repeats=8)
    fused_s = best_seconds(training_step(args.size, args.batch, fused=True), repeats=8)
    compiled_s = best_seconds(training_step(args.size, args.batch, compiled=True), repeats=8, warmup=3)
    layers = layer_costs(args.size, args.batch)
    conv_ms = sum(r["forward_ms"] + r["backward_ms"] for r in layers)
    elementwise_ms = sum(r["relu_ms"] + r["max_pool_ms"] for r in layers)
    deep = layers[1:]  # the first layer is bound by memory (one input channel), the others by arithmetic
    deep_gflops = sum(r["forward_ms"] * r["forward_gflops"] + r["backward_ms"] * r["backward_gflops"]
                      for r in deep) / sum(r["forward_ms"] + r["backward_ms"] for r in deep)
    throughput = json.loads((args.out / "throughput.json").read_text()) if (args.out / "throughput.json").exists() else {}
    keras = throughput.get("keras") or {}
    ours = throughput.get("medcls", {}).get("bf16 channels-last", {})  # medcls' defaults: fused kernels on
    fused_ms = sum(r["fused_ms"] for r in layers)
    deep_conv_ms = sum(r["forward_ms"] + r["backward_ms"] for r in deep)
    ceiling: dict = {"convolutions_ms": round(conv_ms, 1), "relu_and_max_pool_ms": round(elementwise_ms, 1),
                     "rest_of_step_ms": round(eager_s * 1000 - conv_ms - elementwise_ms, 1),
                     "fused_kernels_ms": round(fused_ms, 1), "layers_2_on_convolutions_ms": round(deep_conv_ms, 1),
                     "layers_2_on_gflops": round(deep_gflops, 1),
                     "layers_2_on_share_of_gemm_bf16": round(deep_gflops / peaks["gemm_bf16_gflops"], 3)}
    if keras and ours:
        keras_rate, our_rate = steady(keras["train_images_per_s"]), steady(ours["train_images_per_s"])
        ceiling.update({"keras_train_images_per_s": round(keras_rate, 2),
                        "step_ms_for_2x_keras": round(args.batch / (2 * keras_rate) * 1000, 1),
                        "medcls_end_to_end_step_ms": round(args.batch / our_rate * 1000, 1),
                        "end_to_end_overhead_ms": round(args.batch / our_rate * 1000 - fused_s * 1000, 1)})
    report = {
        "machine": machine(), "size": args.size, "batch": args.batch, "peaks": peaks,
        "default_malloc_step_ms": round(default_malloc_s * 1000, 1),
        "default_malloc_images_per_s": round(args.batch / default_malloc_s, 1),
        "eager_step_ms": round(eager_s * 1000, 1), "eager_images_per_s": round(args.batch / eager_s, 1),
        "fused_step_ms": round(fused_s * 1000, 1), "fused_images_per_s": round(args.batch / fused_s, 1),
        "compiled_step_ms": round(compiled_s * 1000, 1), "compiled_images_per_s": round(args.batch / compiled_s, 1),
        "layers": layers, "ceiling": ceiling,
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
             f"| eager, freed memory kept (`train.reuse_memory`) | {r['eager_step_ms']} | "
             f"{r['eager_images_per_s']} |",
             f"| eager, freed memory kept, fused kernels (`train.fuse_relu_maxpool`, `train.fuse_first_conv`; "
             f"medcls' default) | {r['fused_step_ms']} | {r['fused_images_per_s']} |",
             f"| compiled by TorchInductor (`torch.compile`), freed memory kept | {r['compiled_step_ms']} | "
             f"{r['compiled_images_per_s']} |", "",
             "## Each layer's parts on their own (bf16 channels-last, freed memory kept, best of 7)", "",
             "| convolution | forward ms | GFLOP/s | backward ms | GFLOP/s | ReLU fwd+bwd ms | max-pool fwd+bwd ms "
             "| fused fwd+bwd ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["layers"]:
        fused = f"{x['fused_ms']} (with the convolution)" if x["fused_has_convolution"] else x["fused_ms"]
        lines.append(f"| {x['in']} -> {x['out']} at {x['side']} px | {x['forward_ms']} | {x['forward_gflops']} | "
                     f"{x['backward_ms']} | {x['backward_gflops']} | {x['relu_ms']} | {x['max_pool_ms']} | {fused} |")
    lines += ["", "## Ceiling", "",
              f"- Convolutions {c['convolutions_ms']} ms, ReLU and max-pool {c['relu_and_max_pool_ms']} ms, the rest "
              f"of the step (loss, dense layers, optimiser, casts) {c['rest_of_step_ms']} ms, of the "
              f"{r['eager_step_ms']} ms step.",
              f"- Layers 2-5 run at {c['layers_2_on_gflops']} GFLOP/s, {c['layers_2_on_share_of_gemm_bf16']:.0%} of "
              "the bf16 matrix-product peak: the convolutions cannot get much faster on this CPU."]
    lines.append(f"- Fused, the first layer (convolution, ReLU, max-pool) and the other layers' ReLU + max-pool "
                 f"take {c['fused_kernels_ms']} ms instead of "
                 f"{c['relu_and_max_pool_ms'] + c['convolutions_ms'] - c['layers_2_on_convolutions_ms']:.1f}; "
                 f"the step {r['fused_step_ms']} ms, of which layers 2-5's convolutions {c['layers_2_on_convolutions_ms']}.")
    if "step_ms_for_2x_keras" in c:
        lines.append(f"- 2x Keras ({c['keras_train_images_per_s']} images/s end to end, `results/throughput.json`) "
                     f"allows {c['step_ms_for_2x_keras']} ms per step end to end; medcls' default step takes "
                     f"**{c['medcls_end_to_end_step_ms']} ms** there, of which data loading and Lightning "
                     f"{c['end_to_end_overhead_ms']} ms (its end-to-end rate against the step above).")
    lines += ["", f"Reproduce: `PYTHONPATH=src {r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
