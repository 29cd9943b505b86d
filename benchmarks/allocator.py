"""Page faults per large allocation with and without ``reuse_freed_memory`` (glibc only).

A benchmark, not a test: the counts depend on the kernel, transparent huge pages and the
glibc version. Each mode runs in a fresh process (malloc settings are process-wide).
Writes ``benchmarks/results/allocator.json``.

    PYTHONPATH=src python benchmarks/allocator.py --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json  # noqa: E402

FAULTS = """
import resource, sys, torch
from medcls.core.allocator import reuse_freed_memory
assert reuse_freed_memory(sys.argv[1] == "on")
for _ in range(2):  # warm-up: the heap grows to hold the tensor and what else the first steps allocate
    torch.ones(16 * 2 ** 20)  # 64 MB, over glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2 ** 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    """Minor page faults of 20 allocations of a 64 MB tensor in a fresh process."""
    return int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                              check=True).stdout)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    runs = [{mode: faults(mode) for mode in ("on", "off")} for _ in range(args.repeats)]  # side by side
    result = {"machine": platform.platform(), "allocations": 20, "tensor_mb": 64, "runs": runs,
              "ratio_off_over_on": [round(r["off"] / max(r["on"], 1), 1) for r in runs]}
    return write_json(args.out, "allocator", result)


if __name__ == "__main__":
    main()
