"""Hostile and careless input: the command line answers each bad input with one line and
exit status 2, leaving what the user had intact; damaged training checkpoints are refused;
the web service (real servers on loopback) holds against large images, abandoned requests,
oversized headers, slow clients, foreign hosts and missing API keys."""

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

# Runs ``medcls.cli.main`` on each case in one process (torch is imported once, not per case)
# and prints {case: [exit status, stderr]}; a traceback is caught and shown as such.
CLI_CASES = """
import contextlib, io, json, sys, traceback
from medcls.cli import main
out = {}
for name, args in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = "Traceback"
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def _without_root_override() -> None:
    """In the child before exec: drop the capabilities that let root write read-only folders
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), so a 0o555 folder refuses root too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):
            if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli_cases(cases: dict[str, list[str]], cwd) -> dict[str, tuple]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", CLI_CASES, json.dumps(cases)], capture_output=True, text=True,
                         cwd=cwd, env=env, preexec_fn=_without_root_override, timeout=600)
    assert res.returncode == 0, res.stderr
    return {name: tuple(v) for name, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def assert_one_line(result: tuple, *needles: str) -> None:
    code, stderr = result
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "Traceback" not in stderr and all(n in lines[0] for n in needles), stderr


def class_folders(root, classes=("A", "B"), n: int = 8, size: int = 64):
    """A tiny generated data set in class folders (no image data committed)."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size), np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


def read_only(folder):
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def test_careless_command_lines_get_one_line_and_exit_2(tmp_path):
    """#20 items 5 and 6: binary config and manifest, a missing accelerator package, one class,
    read-only output/run/cache folders and --out, an empty folder, an unknown --out suffix."""
    data, one = class_folders(tmp_path / "data"), class_folders(tmp_path / "one", classes=("A",))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty").mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "pred.csv").write_text("earlier,work\n")
    read_only(kept)
    quick = ["--dataset", "class-folders", "--set", "data.image_size=32", "--set", "model.kwargs.padding=same",
             "--set", "train.epochs=1", "--set", "data.workers=1", "--set", f"output_dir={tmp_path / 'runs'}"]
    img = str(data / "A" / "A0.png")
    cases = {
        "binary config": ["train", "--config", str(binary)],
        "binary manifest": ["train", "--data", str(data), *quick, "--set", f"data.manifest={binary}"],
        "tpu": ["train", "--data", str(data), *quick, "--set", "train.accelerator=tpu"],
        "one class": ["train", "--data", str(one), *quick],
        "read-only output": ["train", "--data", str(data), *quick, "--set", f"output_dir={read_only(tmp_path / 'ro')}"],
        "read-only run dir": ["train", "--data", str(data), *quick, "--run-dir", str(read_only(tmp_path / "run"))],
        "read-only cache": ["train", "--data", str(data), *quick, "--set", f"data.cache_dir={read_only(tmp_path / 'c')}"],
        "read-only --out": ["predict", img, "--out", str(kept / "pred.csv")],
        "empty folder": ["predict", str(tmp_path / "empty"), "--out", str(tmp_path / "empty.csv")],
        "xlsx": ["predict", img, "--out", str(tmp_path / "pred.xlsx")],
    }
    got = run_cli_cases(cases, tmp_path)
    assert_one_line(got["binary config"], "binary.yaml", "not a YAML text file")
    assert_one_line(got["binary manifest"], "binary.yaml", "not a medcls split manifest")
    assert_one_line(got["tpu"], "train.accelerator", "tpu")
    assert_one_line(got["one class"], "one class folder", "at least two")
    assert_one_line(got["read-only output"], f"cannot write {tmp_path / 'ro'}")
    assert_one_line(got["read-only run dir"], f"cannot write {tmp_path / 'run'}")
    assert_one_line(got["read-only cache"], f"cannot write {tmp_path / 'c'}")
    assert_one_line(got["read-only --out"], f"cannot write {kept / 'pred.csv'}")
    assert_one_line(got["empty folder"], "no images found in", "empty")
    assert_one_line(got["xlsx"], "pred.xlsx", ".csv or .json")
    assert (kept / "pred.csv").read_text() == "earlier,work\n" and os.listdir(kept) == ["pred.csv"]
    assert not (tmp_path / "empty.csv").exists() and not (tmp_path / "pred.xlsx").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run folders


@pytest.mark.parametrize("args, needle", [
    (["--port", "70000"], "argument --port: 70000 is out of range (allowed: 1 to 65535)"),
    (["--port", "0"], "argument --port: 0 is out of range"),
    (["--max-batch", "0"], "argument --max-batch: 0 is out of range (allowed: at least 1)"),
    (["--max-files", "-1"], "argument --max-files: -1 is out of range"),
    (["--max-upload-mb", "nan"], "argument --max-upload-mb: nan is out of range"),
    (["--port", "eighty"], "argument --port: 'eighty' is not an integer"),
])
def test_serve_numbers_are_checked_before_anything_starts(args, needle):
    """#20 item 4: the real ``medcls serve`` process refuses impossible numbers in one line."""
    res = subprocess.run([sys.executable, "-m", "medcls.cli", "serve", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch run on a generated 2-class set at 32 px (seconds: PyTorch's ops, not the fused
    kernels, which compile on first use); its checkpoints and model serve the tests below."""
    from medcls.config import load_config
    from medcls.training.train import train

    tmp = tmp_path_factory.mktemp("tiny")
    data = class_folders(tmp / "data", n=12)
    cfg = load_config(None, [
        "data.dataset=class-folders", f"data.root={data}", "data.image_size=32", "data.workers=1",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "model.kwargs.padding=same", "train.epochs=2",
        "train.early_stopping_patience=0", "train.fuse_relu_maxpool=false", "train.fuse_first_conv=false",
        "eval.bootstrap=10", f"output_dir={tmp / 'runs'}"])
    return train(cfg, quiet=True)


def flip_in_largest_tensor(path, state_dict, byte: int, bit: int) -> None:
    """Flip one bit of the stored bytes of ``state_dict``'s largest tensor in the file ``path``."""
    big = max(state_dict.values(), key=lambda t: t.numel())
    data = bytearray(path.read_bytes())
    at = data.find(bytes(big.untyped_storage().tolist()[:4096]))  # as stored (e.g. channels-last)
    assert at > 0
    data[at + 4 * 100 + byte] ^= bit  # float 100 of the tensor
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("byte, bit", [(0, 0x01), (3, 0x40)], ids=["mantissa", "exponent"])
def test_a_flipped_bit_in_last_ckpt_is_refused_on_resume(tiny_run, tmp_path, capsys, byte, bit):
    """#20 item 7: ``train --resume`` on a damaged ``last.ckpt`` is one line and exit 2, not a silent
    resume to other weights (mantissa) or a NaN traceback (exponent); the file is left as it was."""
    import shutil

    import torch

    from medcls.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("training.json", "model.pt"):
        (run / name).unlink()  # as if killed before the end
    last = run / "checkpoints" / "last.ckpt"
    flip_in_largest_tensor(last, torch.load(last, weights_only=True)["state_dict"], byte, bit)
    damaged = last.read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "last.ckpt is damaged" in err and "SHA-256" in err, err
    assert last.read_bytes() == damaged and not (run / "model.pt").exists()


def test_checkpoints_without_a_digest_load_with_a_warning(tiny_run, tmp_path, caplog):
    """Files from before digests still load, but a removed digest (and a zeroed tensor) is not silent."""
    import torch

    from medcls.models.checkpoint import load_checkpoint
    from medcls.training.checkpointing import DIGEST, read_training_checkpoint, save_training_checkpoint

    payload = torch.load(tiny_run / "model.pt", weights_only=True)
    del payload["sha256"]
    name = max(payload["state_dict"], key=lambda k: payload["state_dict"][k].numel())
    payload["state_dict"][name].zero_()
    torch.save(payload, tmp_path / "model.pt")
    with caplog.at_level("WARNING", logger="medcls"):
        net, _ = load_checkpoint(tmp_path / "model.pt")
    assert not net.state_dict()[name].any()
    assert "model.pt has no recorded SHA-256" in caplog.text

    ckpt = read_training_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    assert DIGEST not in ckpt and set(ckpt) >= {"state_dict", "optimizer_states", "callbacks"}
    caplog.clear()
    torch.save(ckpt, tmp_path / "old.ckpt")  # as Lightning wrote it before medcls recorded digests
    with caplog.at_level("WARNING", logger="medcls"):
        read_training_checkpoint(tmp_path / "old.ckpt")
    assert "old.ckpt has no recorded SHA-256" in caplog.text
    caplog.clear()
    save_training_checkpoint(ckpt, tmp_path / "new.ckpt")  # as medcls writes it: round trip, no warning
    with caplog.at_level("WARNING", logger="medcls"):
        again = read_training_checkpoint(tmp_path / "new.ckpt")["state_dict"]
    assert again.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(again[k], ckpt["state_dict"][k]) for k in again)
    assert "SHA-256" not in caplog.text
