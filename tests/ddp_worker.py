"""Run by test_ddp.py: a real 2-process CPU DDP training (gloo) through medcls.train.
Lightning relaunches this script for rank 1; each rank saves what it saw."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from medcls.config import load_config
from medcls.training.train import train


class Record(pl.Callback):
    """Saves this rank's training-sample indices of epoch 0 and its final weights."""

    def __init__(self, out: Path):
        self.out, self.indices = out, None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.indices is None:
            self.indices = list(iter(trainer.train_dataloader.sampler))

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        torch.save({"rank": trainer.global_rank, "world": trainer.world_size, "indices": self.indices,
                    "state": state}, self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config(None, overrides)
    train(cfg, run_dir=out / "run", quiet=True, callbacks=[Record(out)])
