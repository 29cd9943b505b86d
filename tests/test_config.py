from pathlib import Path

import pytest

from medcls.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_presets_load(path):
    cfg = load_config(path)
    assert cfg.data.image_size >= 32
    assert cfg.name


def test_overrides_apply_and_keep_types(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "train.lr=1e-4", "data.color_mode=rgb", "model.kwargs.padding=same"])
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.color_mode == "rgb" and cfg.model.kwargs == {"padding": "same"}


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),            # typo
    ("train.epochs=three", "train.epochs"),      # wrong type
    ("train.epochs=0", "train.epochs"),          # impossible value
    ("data.color_mode=cmyk", "data.color_mode"),  # not a choice
    ("augment.hflip=maybe", "augment.hflip"),
    ("nosuchsection.x=1", "nosuchsection"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
