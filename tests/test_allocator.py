"""Keeping freed memory: large tensors stop being page-faulted in anew on every allocation."""

import subprocess
import sys

import pytest

from conftest import assert_switch_keeps_weights
from medcls.allocator import reuse_freed_memory

FAULTS = """
import resource, sys, torch
from medcls.allocator import reuse_freed_memory
assert reuse_freed_memory(sys.argv[1] == "on")
for _ in range(2):  # warm-up: the heap grows to hold the tensor and what else the first steps allocate
    torch.ones(16 * 2 ** 20)  # 64 MB, over glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2 ** 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not reuse_freed_memory(False), reason="glibc only")
def test_reuse_freed_memory_stops_page_faults_on_each_large_allocation():
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("on", "off")}
    assert faults["off"] >= 20  # glibc's default: every 64 MB tensor is a fresh mapping, faulted in again
    # kept memory: the heap may still grow once or twice as it settles, not once per tensor
    assert faults["on"] * 4 <= faults["off"], faults


def test_reuse_memory_leaves_training_unchanged(tmp_path, xray_root):
    """The switch changes where tensors live, not a single number a run computes: the same
    seed trains the same weights with and without it (at 128 px, where the first layer's
    activations are over glibc's mmap threshold)."""
    try:
        assert_switch_keeps_weights(tmp_path, xray_root, "train.reuse_memory", size=128)
    finally:
        reuse_freed_memory(True)  # medcls' default, for the tests after this one
