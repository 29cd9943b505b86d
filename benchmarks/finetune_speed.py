"""Fine-tuning speed of a pretrained EfficientNet-Lite on this CPU: training images/s of full
fine-tuning (forward, backward, AdamW step) in float32 eager vs bf16 autocast, channels-last and
contiguous, measured side by side in one process (alternating rounds: this machine is noisy).
Writes ``benchmarks/results/finetune_speed.json``.

    PYTHONPATH=src python benchmarks/finetune_speed.py --size 160 --batch 8 --steps 3 --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402


def images_per_s(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 bf16: bool, steps: int) -> float:
    """Training images per second over ``steps`` steps (after one warm-up step)."""
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    from medcls.models import build_model
    from medcls.models.pretrained import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_model(args.arch, 3, 5, args.size)
    load_pretrained(net.backbone, args.arch, "imagenet")
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 5, (args.batch,))
    rounds = []
    for _ in range(args.rounds):
        figures = {}
        for layout, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            net, xs = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            for mode in ("fp32", "bf16"):
                figures[f"{mode}_{layout}"] = round(images_per_s(net, opt, xs, y, mode == "bf16", args.steps), 2)
        rounds.append(figures)
    result = {"machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "arch": args.arch, "pretrained": "imagenet", "image_size": args.size, "batch": args.batch,
              "steps_per_round": args.steps, "rounds": rounds,
              "bf16_over_fp32_channels_last": [round(r["bf16_channels_last"] / r["fp32_channels_last"], 2) for r in rounds]}
    return write_json(args.out, "finetune_speed", result)


if __name__ == "__main__":
    main()
