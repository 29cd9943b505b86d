"""Reliability: a training process killed mid-epoch resumes to the same weights as
an uninterrupted run; the same config and seed give the same metrics; runs record
their provenance; damaged or mismatched files are refused; a full disk is one
clear error that leaves earlier work intact."""

import csv
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import medcls
from conftest import ROOT, quick_overrides
from medcls.api import evaluate
from medcls.cli import main
from medcls.config import load_config
from medcls.core.io import DiskFullError, atomic_path, atomic_write_json
from medcls.data.datasets import DataError, load_index
from medcls.data.fingerprint import split_fingerprint
from medcls.data.split import read_manifest
from medcls.evaluation.evaluate import EvaluationError
from medcls.models.checkpoint import CheckpointError, load_checkpoint
from medcls.training.resume import resume
from medcls.training.train import train

PRESET = ROOT / "configs" / "pneumonia-quick.yaml"


def tiny_overrides(out) -> list[str]:
    """16 images per class and split in batches of 8 (4 training batches an epoch), 4 epochs.
    lr_patience=0 lowers the learning rate after any epoch without improvement, and early
    stopping is on, so scheduler and callback state matter to the final weights."""
    return quick_overrides(out, limit=16, epochs=4) + [
        "data.batch_size=8", "train.threads=1", "train.lr_patience=0", "train.early_stopping_patience=3"]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, xray_root):
    return train(load_config(PRESET, tiny_overrides(tmp_path_factory.mktemp("runs"))), quiet=True)


# Trains in a child process that stops for good on the second batch fetched after the
# first checkpoint exists: one optimizer step into the second epoch.
PAUSE_MID_EPOCH = """
import sys, time
from pathlib import Path
from medcls.config import load_config
from medcls.data import prepared
from medcls.training.train import train

run = Path(sys.argv[1])
fetch, fetched = prepared.CachedImages.__getitems__, []

def pausing(self, idx):
    if (run / "checkpoints" / "last.ckpt").exists():
        fetched.append(idx)
        if len(fetched) == 2:
            (run / "paused").touch()
            time.sleep(600)
    return fetch(self, idx)

prepared.CachedImages.__getitems__ = pausing
train(load_config(sys.argv[2], sys.argv[3:]), run, quiet=True)
"""


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    run = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", PAUSE_MID_EPOCH, str(run), str(PRESET),
                              *tiny_overrides(tmp_path)], cwd=ROOT)
    deadline = time.monotonic() + 300
    while not (run / "paused").exists():
        assert child.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, "training never reached its second epoch"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (run / "model.pt").exists()

    assert main(["train", "--resume", str(run)]) == 0

    a = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, 16)
    _assert_same_tensors(a["state_dict"], b["state_dict"])  # bitwise: CPU, one thread, same random draws
    for (i, sa), (j, sb) in zip(a["optimizer_states"][0]["state"].items(), b["optimizer_states"][0]["state"].items()):
        assert i == j
        _assert_same_tensors(sa, sb)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    early = next(k for k in a["callbacks"] if k.startswith("EarlyStopping"))
    assert a["callbacks"][early] == b["callbacks"][early]
    _assert_same_tensors(torch.load(uninterrupted / "model.pt", weights_only=True)["state_dict"],
                         torch.load(run / "model.pt", weights_only=True)["state_dict"])
    # nothing lost from the killed process: every epoch is logged and timed once
    assert (uninterrupted / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    epochs = [e["epoch"] for e in json.loads((run / "training.json").read_text())["per_epoch"]]
    assert epochs == [0, 1, 2, 3]


def test_same_config_and_seed_give_identical_metrics(uninterrupted, tmp_path):
    again = train(load_config(PRESET, tiny_overrides(tmp_path)), quiet=True)
    assert again != uninterrupted
    first = evaluate(uninterrupted, out_dir=tmp_path / "first", quiet=True)
    second = evaluate(again, out_dir=tmp_path / "second", quiet=True)
    assert first.metrics == second.metrics and first.ci95 == second.ci95
    on_disk = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("first", "second")]
    assert on_disk[0]["metrics"] == on_disk[1]["metrics"] and on_disk[0]["n_test"] == 32


def test_run_records_versions_config_manifest_hash_and_data_fingerprint(uninterrupted):
    env = json.loads((uninterrupted / "environment.json").read_text())
    assert env["medcls"] == medcls.__version__ and env["torch"] == torch.__version__
    assert {"git_commit", "lightning", "torchvision", "numpy", "python"} <= set(env)
    data = json.loads((uninterrupted / "data.json").read_text())
    assert data["manifest_sha256"] == _sha256(uninterrupted / "manifest.csv")
    fingerprint = data["fingerprint"]
    assert set(fingerprint) == {"train", "val", "test", "all"} and len(set(fingerprint.values())) == 4
    _, info = load_checkpoint(uninterrupted)
    assert info.test_fingerprint == fingerprint["test"]
    assert load_config(uninterrupted / "config.yaml").to_dict() == info.config


def test_evaluate_refuses_test_images_whose_content_changed(uninterrupted, tmp_path, xray_root):
    copy = tmp_path / "data"
    with (uninterrupted / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        (copy / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(xray_root / row["path"], copy / row["path"])
    index = load_index("pneumonia", copy)
    test = read_manifest(uninterrupted / "manifest.csv", index)["test"]
    _, info = load_checkpoint(uninterrupted)
    assert split_fingerprint(index, test) == info.test_fingerprint  # an exact copy matches
    victim = copy / next(r["path"] for r in rows if r["split"] == "test")
    Image.open(victim).convert("L").save(victim, format="JPEG", quality=40)  # same name and label
    with pytest.raises(EvaluationError, match="different content"):
        evaluate(uninterrupted, data_root=copy, out_dir=tmp_path / "eval", quiet=True)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_resume_refuses_what_it_cannot_continue(uninterrupted, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="already finished"):
        resume(uninterrupted)
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    for name in ("training.json", "model.pt"):
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=9"]) == 2
    assert "leave out --config/--set" in capsys.readouterr().err

    record = json.loads((run / "data.json").read_text())
    changed = {**record, "fingerprint": {**record["fingerprint"], "test": "0" * 64}}
    atomic_write_json(run / "data.json", changed)  # as if a test image had changed since the run began
    with pytest.raises(DataError, match="test images .* differ"):
        resume(run)
    atomic_write_json(run / "data.json", record)

    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="last.ckpt is not a readable training checkpoint"):
        resume(run)
    last.unlink()
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        resume(run)


def test_flipped_byte_in_the_weights_is_detected(uninterrupted, tmp_path):
    model = uninterrupted / "model.pt"
    weights = torch.load(model, weights_only=True)["state_dict"]
    big = max(weights.values(), key=lambda t: t.numel())
    data = bytearray(model.read_bytes())
    at = data.find(big.numpy().tobytes()[:4096]) + 1000  # inside the tensor's stored bytes
    data[at] ^= 0x10
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged.*SHA-256"):
        load_checkpoint(damaged)


def test_atomic_write_leaves_the_previous_file_when_the_disk_fills(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"auc": 0.9})
    before = target.read_bytes()
    with pytest.raises(DiskFullError, match="no space left on device while writing .*metrics.json"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"auc": 0.')  # half the new file is out when the disk fills
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_bytes() == before and sorted(tmp_path.iterdir()) == [target]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, filled up to its last 64 KiB (needs root, as in CI containers)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk, leave: int) -> None:
    st = os.statvfs(disk)
    with (disk / "filler").open("wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_full_disk_is_one_clear_error_and_earlier_runs_are_intact(small_disk, uninterrupted, capsys):
    earlier = small_disk / "runs" / "earlier"
    shutil.copytree(uninterrupted, earlier, ignore=shutil.ignore_patterns("checkpoints"))
    digests = {p: _sha256(p) for p in earlier.rglob("*") if p.is_file()}
    _fill(small_disk, 64 << 10)
    sets = [x for o in tiny_overrides(small_disk / "runs") for x in ("--set", o)]
    assert main(["train", "-c", str(PRESET), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: no space left on device while writing" in err[-1] and "Traceback" not in "\n".join(err)
    assert {p: _sha256(p) for p in earlier.rglob("*") if p.is_file()} == digests
    new = next(p for p in (small_disk / "runs").iterdir() if p != earlier)
    assert not (new / "model.pt").exists() and not list(small_disk.rglob("*.tmp"))
    for ckpt in (new / "checkpoints").glob("*.ckpt"):  # whatever a failed write left must be whole
        torch.load(ckpt, weights_only=True)


def test_full_disk_while_decoding_the_cache_is_an_error_not_a_crash(small_disk, xray_root):
    """The cache is a memory map: without space reserved up front, a full disk kills the
    process with SIGBUS mid-decode. A child process keeps a regression from taking pytest down."""
    _fill(small_disk, 64 << 10)
    code = ("import sys; from pathlib import Path; from medcls.data.cache import build_cache\n"
            "paths = sorted(Path(sys.argv[1]).glob('*.jpeg'))[:40]\n"
            "build_cache(paths, 64, 'grayscale', sys.argv[2], workers=1, quiet=True)")
    res = subprocess.run([sys.executable, "-c", code, str(xray_root / "test" / "NORMAL"), str(small_disk / "cache")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "DiskFullError: no space left on device while writing" in res.stderr
    assert not list((small_disk / "cache").iterdir())
