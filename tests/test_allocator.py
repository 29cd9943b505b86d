"""Keeping freed memory: the exact mallopt calls, and that the switch changes no number.
(Its effect on page faults depends on the kernel: benchmarks/allocator.py measures it.)"""

import pytest

from medcls.core import allocator


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Record the mallopt calls instead of changing this process's malloc."""
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    monkeypatch.setattr(allocator, "_mallopt", lambda: mallopt)
    return calls


def test_enable_turns_mmap_and_trimming_off(mallopt_calls):
    assert allocator.reuse_freed_memory(True)
    assert sorted(mallopt_calls) == sorted([(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, 2 ** 31 - 1)])


def test_disable_restores_glibc_defaults(mallopt_calls):
    assert allocator.reuse_freed_memory(False)
    assert sorted(mallopt_calls) == sorted([(allocator.M_MMAP_MAX, 65536), (allocator.M_TRIM_THRESHOLD, 128 * 1024)])


def test_a_refused_setting_reports_false(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda param, value: 0)  # mallopt's failure value
    assert not allocator.reuse_freed_memory(True)


def test_without_glibc_nothing_is_called(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    assert allocator.reuse_freed_memory(True) is False


def test_environment_for_child_processes_matches_the_calls():
    assert allocator.keep_freed_memory_environment() == {"MALLOC_MMAP_MAX_": "0",
                                                         "MALLOC_TRIM_THRESHOLD_": str(2 ** 31 - 1)}


def test_loading_a_model_for_prediction_changes_no_malloc_setting(mallopt_calls):
    """Library code leaves malloc alone: the entry points (CLI, service, benchmarks) decide."""
    from medcls.assets import shipped_model
    from medcls.inference.predictor import Predictor

    Predictor.load(shipped_model())
    assert mallopt_calls == []


@pytest.mark.slow
def test_reuse_memory_leaves_training_unchanged(tmp_path, xray_root):
    """The setting changes where tensors live, not a single number a run computes: the same
    seed trains the same weights with and without it (at 128 px, where the first layer's
    activations are over glibc's mmap threshold)."""
    import torch

    from conftest import ROOT, quick_overrides
    from medcls.config import load_config
    from medcls.models.checkpoint import load_checkpoint
    from medcls.training.train import train

    weights = []
    try:
        for keep in (True, False):
            allocator.reuse_freed_memory(keep)
            cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml",
                              quick_overrides(tmp_path / str(keep), xray_root, limit=40, size=128, epochs=2)
                              + ["train.precision=bf16-mixed"])
            weights.append(load_checkpoint(train(cfg, quiet=True))[0].state_dict())
    finally:
        allocator.reuse_freed_memory(False)  # glibc's defaults, as the process started
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
