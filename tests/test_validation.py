"""Bad input fails before any work, with the key, folder or class named: config
values that only the architecture, the data set registry or Lightning can judge
are checked before a single image is read."""

import shutil

import pytest

from conftest import ROOT
from medcls.cli import main
from medcls.config import ConfigError, load_config
from medcls.config.checks import check_run_config
from medcls.data.datasets import DataError
from medcls.data.prepared import prepare_data
from medcls.models import ARCHS
from medcls.training.train import train

PRESET = ROOT / "configs" / "pneumonia-quick.yaml"


@pytest.mark.parametrize("overrides, key", [
    (["model.kwargs.paddin=same"], "model.kwargs.paddin"),          # not an argument of seed-cnn
    (["model.kwargs.padding=diagonal"], "model.kwargs"),            # an argument the architecture refuses
    (["model.kwargs.num_outputs=3"], "model.kwargs.num_outputs"),    # set from the data, not by the user
    (["data.image_size=32"], "data.image_size"),                    # too small for valid-padded seed-cnn
    (["model.arch=resnet99"], "model.arch"),
    (["data.dataset=xrays"], "data.dataset"),
    (["train.monitor=val_aucc"], "train.monitor"),
    (["data.val_fraction=0"], "train.monitor"),                     # nothing to monitor
    (["train.accelerator=gpux"], "train.accelerator"),
    (["train.strategy=dpp"], "train.strategy"),
    (["train.devices=-3"], "train.devices"),
    (["train.num_nodes=0"], "train.num_nodes"),
    (["train.seed=-1"], "train.seed"),                              # Lightning would pick a random seed
    (["train.lr_factor=1.5"], "train.lr_factor"),
    (["train.threads=0"], "train.threads"),
    (["data.workers=-2"], "data.workers"),
    (["augment.mixup=-1"], "augment.mixup"),
    (["eval.bootstrap=-5"], "eval.bootstrap"),
])
def test_bad_config_fails_before_reading_data(overrides, key, tmp_path):
    # The data folder does not exist: reaching the data would raise DataError instead.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(load_config(PRESET, [*overrides, f"data.root={tmp_path / 'absent'}", f"output_dir={tmp_path}"]),
              quiet=True)
    assert not list(tmp_path.iterdir())  # no run folder was started


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_architecture_passes_with_its_defaults(arch):
    extra = ["model.kwargs.padding=same"] if arch == "seed-cnn" else []
    assert check_run_config(load_config(PRESET, [f"model.arch={arch}", "data.image_size=64", *extra]))


def test_cli_names_the_unknown_model_argument(tmp_path, capsys):
    assert main(["train", "--set", "model.kwargs.widht=3", "--set", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.kwargs.widht" in err[0] and "widths, dense, padding, dropout" in err[0]


def test_class_with_no_readable_test_images_is_reported(xray_root, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((xray_root / split / cls).iterdir())[:4]:
                shutil.copy(p, root / split / cls / p.name)
    for p in (root / "test" / "NORMAL").iterdir():
        p.write_bytes(b"\xff\xd8\xff\xe0 damaged")  # the folder is there, its images are not readable
    cfg = load_config(PRESET, [f"data.root={root}", "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match=r"test split of .*data has no readable images of class\(es\) \['NORMAL'\]"):
        prepare_data(cfg.data, quiet=True)
