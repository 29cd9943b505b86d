import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import XRAY

pytestmark = [pytest.mark.data, pytest.mark.slow]  # trains on the real data sets, two processes

HERE = Path(__file__).resolve().parent


def test_two_process_cpu_ddp_sees_disjoint_data_and_agrees(tmp_path):
    overrides = [f"data.root={XRAY}", "data.limit_per_class=24", "data.image_size=64", "model.kwargs.padding=same",
                 "train.epochs=2", "train.accelerator=cpu", "train.devices=2", "train.strategy=ddp",
                 "train.early_stopping_patience=0", "eval.bootstrap=0", "data.batch_size=8"]
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    env.pop("MEDCLS_RUN_DIR", None)
    res = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path), *overrides],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["indices"] and r1["indices"]
    assert not set(r0["indices"]) & set(r1["indices"])  # each rank its own shard
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key  # gradients were all-reduced
    assert (tmp_path / "run" / "model.pt").is_file()
    assert not any(p.name.startswith("run-") for p in tmp_path.iterdir())  # rank 1 made no run folder of its own
