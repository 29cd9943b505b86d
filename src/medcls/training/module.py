"""The LightningModule: loss (with class weights or label smoothing), batched
augmentation, mixup, per-epoch train/val loss, accuracy and AUC (and quadratic
weighted kappa for more than two classes), optimizer and learning-rate schedule
from the config."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from medcls.config import AugmentConfig, TrainConfig
from medcls.data.augment import BatchAugment
from medcls.data.prepared import to_model_input
from medcls.models import ImageClassifier
from medcls.models.fused import fused_layers


class LitClassifier(pl.LightningModule):
    def __init__(self, net: ImageClassifier, num_classes: int, train_cfg: TrainConfig, augment_cfg: AugmentConfig,
                 class_counts: list[int], pretrained: frozenset[str] = frozenset()):
        super().__init__()
        self.net = net
        # names (in ``net``) of the parameters loaded from pretrained weights: fine-tuned apart from the head
        self.pretrained = pretrained
        self.num_classes = num_classes
        self.cfg = train_cfg
        self.augment = BatchAugment(augment_cfg)
        self.mixup = augment_cfg.mixup
        self.binary = num_classes == 2
        if train_cfg.loss != "auto" and (train_cfg.loss == "bce") != self.binary:
            raise ValueError(f"loss '{train_cfg.loss}' does not fit {num_classes} classes "
                             f"(bce is for 2 classes, ce for more)")
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        weight = counts.sum() / (len(counts) * counts) if train_cfg.imbalance == "class_weights" else None
        # BCE's pos_weight is the negative/positive ratio; CE's weights are inverse frequency.
        self.register_buffer("class_weight", weight if weight is not None else torch.ones(num_classes))
        self.use_weight = weight is not None
        task = "binary" if self.binary else "multiclass"
        kw = {} if self.binary else {"num_classes": num_classes}
        self.train_acc = torchmetrics.Accuracy(task=task, **kw)
        self.val_acc = torchmetrics.Accuracy(task=task, **kw)
        self.val_auc = torchmetrics.AUROC(task=task, **kw)
        # Quadratic weighted kappa, the grading metric, for monitoring ordinal models (val_qwk).
        self.val_qwk = None if self.binary else torchmetrics.CohenKappa(task=task, weights="quadratic", **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ls = self.cfg.label_smoothing
        logits = logits.float()
        if self.binary:
            target = y.float() * (1 - ls) + 0.5 * ls
            pos_weight = self.class_weight[1] / self.class_weight[0] if self.use_weight else None
            return F.binary_cross_entropy_with_logits(logits[:, 0], target, pos_weight=pos_weight)
        return F.cross_entropy(logits, y, weight=self.class_weight if self.use_weight else None, label_smoothing=ls)

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """p(positive) for binary models, class probabilities otherwise (for the metrics)."""
        logits = logits.detach().float()
        return torch.sigmoid(logits[:, 0]) if self.binary else torch.softmax(logits, dim=1)

    def training_step(self, batch, batch_idx):
        images, y = batch
        x = self.augment(to_model_input(images, self.cfg.channels_last))
        if self.mixup > 0:
            lam = float(np.random.beta(self.mixup, self.mixup))
            perm = torch.randperm(x.shape[0], device=x.device)
            x = lam * x + (1 - lam) * x[perm]
        # Only the training forward is fused: what evaluation and the callbacks see is the plain network.
        with fused_layers(self.net, self.cfg.fuse_relu_maxpool, self.cfg.fuse_first_conv):
            logits = self(x)
        if self.mixup > 0:
            loss = lam * self.loss(logits, y) + (1 - lam) * self.loss(logits, y[perm])
        else:
            loss = self.loss(logits, y)
        self.train_acc(self._scores(logits), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        images, y = batch
        logits = self(to_model_input(images, self.cfg.channels_last))
        scores = self._scores(logits)
        self.val_acc(scores, y)
        self.val_auc(scores, y)
        self.log("val_loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=len(y))
        self.log("val_auc", self.val_auc, on_epoch=True, prog_bar=True, batch_size=len(y))
        if self.val_qwk is not None:
            self.val_qwk(scores, y)
            self.log("val_qwk", self.val_qwk, on_epoch=True, prog_bar=True, batch_size=len(y))

    def _head_only(self) -> bool:
        """Whether this epoch is a head warm-up one (the pretrained tensors frozen)."""
        return bool(self.pretrained) and self.current_epoch < self.cfg.head_warmup_epochs

    def on_train_epoch_start(self) -> None:
        if self.cfg.head_warmup_epochs and self.pretrained:
            # the fresh head learns first, so its random gradients do not wreck the pretrained features
            train_all = not self._head_only()
            for name, p in self.net.named_parameters():
                if name in self.pretrained:
                    p.requires_grad_(train_all)
            self.train(self.training)  # the norms' mode follows the epoch

    def train(self, mode: bool = True):
        """Training mode, except for the pretrained BatchNorm layers while they are frozen (head warm-up)
        or kept (``train.freeze_bn``): they normalise with the weights' running statistics instead of
        re-estimating them on the batches. Their statistics are pretrained tensors too: re-estimated on
        fundus batches they gave worse frozen features (benchmarks/retinopathy.md)."""
        super().train(mode)
        if mode and self.pretrained and (self.cfg.freeze_bn or self._head_only()):
            for name, m in self.net.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" in self.pretrained:
                    m.eval()
        return self

    def param_groups(self) -> list[dict]:
        """Parameter groups: pretrained tensors at ``lr * backbone_lr_scale`` (discriminative learning
        rates), and, with ``no_decay_norm_bias``, norms and biases (the 1-D tensors) without weight decay."""
        cfg = self.cfg
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.net.named_parameters():
            decay = not (cfg.no_decay_norm_bias and p.ndim <= 1)
            groups.setdefault((name in self.pretrained, decay), []).append(p)
        return [{"params": params, "lr": cfg.lr * (cfg.backbone_lr_scale if pretrained else 1.0),
                 "weight_decay": cfg.weight_decay if decay else 0.0}
                for (pretrained, decay), params in sorted(groups.items())]

    def configure_optimizers(self):
        cfg = self.cfg
        params = self.param_groups()
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "plateau":
            mode = "min" if cfg.monitor.endswith("loss") else "max"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.lr_factor,
                                                               patience=cfg.lr_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": cfg.monitor}}
        if cfg.scheduler == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = min(total - 1, int(total * cfg.warmup_epochs / max(1, cfg.epochs)))

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt
