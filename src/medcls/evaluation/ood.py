"""Out-of-distribution flag: "this input does not look like what I was trained on".

The features are the channel means of the network's last activation at each
spatial scale (what an image is made of: contrast, texture, edges), followed by
the penultimate activations (what the classifier makes of it). Each block gets
class-conditional Gaussians with one shared covariance, estimated with
Ledoit-Wolf shrinkage on the training images (the Mahalanobis score of Lee et
al., 2018, on several layers). A block's distance to the nearest class mean is
divided by its validation quantile, so that blocks are comparable; the score is
the largest, and its threshold is the validation quantile that flags a chosen
fraction (default 5%) of in-distribution images.

Why several scales: measured on a trained X-ray model (``benchmarks/ood.py``),
the penultimate layer alone flags 2-7% of fundus photographs, noise and
rendered text (a well-trained binary network keeps little there besides the
class evidence), energy and max-logit scores 0-37% of such sets (the classifier
is often sure about a foreign image), while with the channel means of every
scale all of them are flagged. See ``benchmarks/results/ood.md``.

Scoring is a function of ``(features, logits)`` numpy arrays only, so the same
detector serves PyTorch and exported (ONNX) models whose "features" output
comes from :class:`OODFeatures`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from medcls.checkpoint import ModelInfo
from medcls.config import AugmentConfig
from medcls.data.augment import augmented_copies
from medcls.data.prepared import to_model_input
from medcls.models.fused import FirstStageWithMeans, fusable_first_stage
from medcls.models.inference import WithFeatures, tta_views

METHODS = ("mahalanobis-multiscale", "mahalanobis-penultimate", "energy", "max-logit")


@torch.inference_mode()
def scale_ends(net: torch.nn.Module, image_size: int, channels: int) -> list[tuple[torch.nn.Module, int]]:
    """For each spatial scale (octave) of ``net``'s activations, the module whose output is
    computed last at that scale (a whole stage where the network has stage modules), with
    its channel count; found by one probe pass. Scales below 2 px are left to the
    penultimate features."""
    seen: list[tuple[torch.nn.Module, int, int]] = []
    calls: Counter = Counter()

    def record(module, inputs, output):
        calls[module] += 1
        if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= 2:
            seen.append((module, int(math.log2(min(output.shape[2:]))), int(output.shape[1])))

    handles = [m.register_forward_hook(record) for m in net.modules()]
    try:
        device = next(net.parameters()).device
        net.eval()(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    # Later entries win; a module run more than once per pass (a shared ReLU) has no single output.
    last = {octave: (module, c) for module, octave, c in seen if calls[module] == 1}
    return [last[o] for o in sorted(last, reverse=True)]


class OODFeatures(WithFeatures):
    """``(logits, features)``: features are the channel means at each spatial scale, then
    the penultimate activations (block sizes in :attr:`blocks`). Export this wrapper to
    ONNX to score exported models.

    ``fused`` (the compiled backend's choice): where the network begins with a convolution,
    ReLU and max-pool the fused kernel runs (:func:`medcls.models.fused.fusable_first_stage`),
    that stage is replaced, in ``net`` itself, by one that computes the first scale's
    channel means on the way, so its full-size activation is never stored."""

    def __init__(self, net: torch.nn.Module, image_size: int, channels: int, fused: bool = False):
        super().__init__(net)
        taps = scale_ends(net, image_size, channels)
        self.blocks = [c for _, c in taps] + [self._head.in_features]
        self._pooled: Optional[list[torch.Tensor]] = None  # a list only while this wrapper runs
        for module, _ in taps:
            module.register_forward_hook(self._pool)
        backbone = fusable_first_stage(net, image_size) if fused else None
        if backbone is not None and taps and taps[0][0] is backbone[1]:  # its ReLU ends the first scale
            backbone[0], backbone[1], backbone[2] = FirstStageWithMeans(backbone[0], self._keep_means), \
                torch.nn.Identity(), torch.nn.Identity()

    def _keep_means(self, means: torch.Tensor) -> None:
        if self._pooled is not None:
            self._pooled.append(means)

    def _pool(self, module, inputs, output):
        # The mean is taken at once: a later in-place activation must not change it.
        self._keep_means(output.float().mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._pooled = []
        try:
            logits, penultimate = super().forward(x)
            return logits, torch.cat([*self._pooled, penultimate.float()], dim=1)
        finally:
            self._pooled = None


@torch.inference_mode()
def logits_and_features(model: WithFeatures, images: np.ndarray, batch_size: int = 64, tta: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, outputs)`` and features ``(N, D)`` for uint8 images ``(N, H, W, C)``.

    With ``tta`` the logits are averaged over the test-time views and the features are
    the image's own, from the same passes (as in the exported ONNX graph): the flag
    then costs no extra forward pass."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = to_model_input(chunk)
        z, f = model(x)
        if tta:
            z = torch.stack([z, *(model.net(v) for v in tta_views(x)[1:])]).mean(0)
        logits.append(z.float().cpu())
        features.append(f.float().cpu())
    if not logits:
        return np.zeros((0, 1), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def _class_logits(logits: np.ndarray) -> np.ndarray:
    # A binary model's one logit z gives the same probabilities as the symmetric pair (-z/2, z/2),
    # whose energy and maximum depend on |z| only, like the model's confidence.
    logits = logits.astype(np.float64)
    return np.concatenate([-logits / 2, logits / 2], axis=1) if logits.shape[1] == 1 else logits


@dataclass
class Gaussians:
    """Class means and the whitening ``W`` (``W W^T`` = shared precision) of one feature block."""

    means: np.ndarray  # (K, d)
    whitening: np.ndarray  # (d, d)
    scale: float = 1.0  # the block's validation quantile: distances are divided by it

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "Gaussians":
        f = features.astype(np.float64)
        classes = np.unique(labels)
        means = np.stack([f[labels == k].mean(axis=0) for k in classes])
        # Shrinkage keeps the precision finite when ReLU units are dead or features collinear.
        cov = LedoitWolf(assume_centered=True).fit(f - means[np.searchsorted(classes, labels)]).covariance_
        eigval, eigvec = np.linalg.eigh(cov)
        return cls(means, eigvec / np.sqrt(np.maximum(eigval, 1e-12 * eigval.max())))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, divided by ``scale``."""
        w = self.whitening.astype(np.float64)
        z, c = features.astype(np.float64) @ w, self.means.astype(np.float64) @ w
        d2 = (z ** 2).sum(axis=1)[:, None] - 2 * z @ c.T + (c ** 2).sum(axis=1)[None]  # (N, K), no (N, K, d)
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0)) / self.scale


@dataclass
class OODDetector:
    """A fitted out-of-distribution score and its threshold (higher score = less familiar)."""

    method: str
    threshold: float
    flag_rate: float  # fraction of validation images flagged at ``threshold``
    blocks: list[int]  # sizes of the feature blocks (scales..., penultimate), see OODFeatures
    gaussians: dict[int, Gaussians] = field(default_factory=dict)  # block index -> its Gaussians
    augmented: bool = False  # the Gaussians saw augmented copies of the training images too

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The OOD score of each image from its features (:class:`OODFeatures`) and logits."""
        if self.method in ("energy", "max-logit"):
            z = _class_logits(logits)
            top = z.max(axis=1)
            return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1))) if self.method == "energy" else -top
        if features.shape[1] != sum(self.blocks):
            raise ValueError(f"OOD detector expects {sum(self.blocks)} features per image (blocks {self.blocks}), "
                             f"got {features.shape[1]}: compute them with OODFeatures")
        edges = np.cumsum([0, *self.blocks])
        return np.max([g.distance(features[:, edges[b]:edges[b + 1]]) for b, g in self.gaussians.items()], axis=0)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return scores <= self.threshold

    def to_state(self) -> dict:
        """Plain values and tensors, loadable with ``torch.load(weights_only=True)``."""
        return {"method": self.method, "threshold": float(self.threshold), "flag_rate": float(self.flag_rate),
                "blocks": list(self.blocks), "augmented": self.augmented,
                "gaussians": [{"block": b, "means": torch.from_numpy(g.means.astype(np.float32)),
                               "whitening": torch.from_numpy(g.whitening.astype(np.float32)), "scale": float(g.scale)}
                              for b, g in self.gaussians.items()]}

    @classmethod
    def from_state(cls, state: dict) -> "OODDetector":
        # tensors in a checkpoint, nested lists in an ONNX file's JSON metadata
        gaussians = {g["block"]: Gaussians(np.asarray(g["means"], np.float32), np.asarray(g["whitening"], np.float32),
                                           g["scale"]) for g in state["gaussians"]}
        return cls(state["method"], state["threshold"], state["flag_rate"], list(state["blocks"]), gaussians,
                   bool(state.get("augmented", False)))  # older checkpoints: fitted without copies

    @classmethod
    def from_info(cls, info: ModelInfo) -> Optional["OODDetector"]:
        """The detector stored in a checkpoint, or None for models trained without one."""
        state = info.extras.get("ood")
        return cls.from_state(state) if state else None


def fit_detector(method: str, blocks: list[int], train_features: np.ndarray, train_labels: np.ndarray,
                 val_features: np.ndarray, val_logits: np.ndarray, flag_rate: float,
                 augmented: bool = False) -> OODDetector:
    """Fit ``method`` on training features (``augmented``: they include augmented copies); set its
    threshold to flag ``flag_rate`` of validation."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r} (known: {', '.join(METHODS)})")
    detector = OODDetector(method, 0.0, flag_rate, list(blocks), augmented=augmented)
    used = {"mahalanobis-multiscale": range(len(blocks)), "mahalanobis-penultimate": [len(blocks) - 1]}
    edges = np.cumsum([0, *blocks])
    for b in used.get(method, []):
        g = Gaussians.fit(train_features[:, edges[b]:edges[b + 1]], train_labels)
        g.scale = float(np.quantile(g.distance(val_features[:, edges[b]:edges[b + 1]]), 1.0 - flag_rate))
        detector.gaussians[b] = g
    detector.threshold = float(np.quantile(detector.score(val_features, val_logits), 1.0 - flag_rate))
    return detector


def fit_ood(net: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
            flag_rate: float = 0.05, method: str = "mahalanobis-multiscale", batch_size: int = 64,
            tta: bool = False, augment: Optional[AugmentConfig] = None) -> OODDetector:
    """Fit the OOD detector of a trained ``net`` (training images, unaugmented, plus one copy of each
    augmented by ``augment`` if given; threshold on validation, with the logits the model predicts
    with: TTA-averaged if ``tta``)."""
    model = OODFeatures(net, train_images.shape[1], train_images.shape[3])
    train_features, train_labels = reference_features(model, train_images, train_labels, batch_size, augment)
    val_logits, val_features = logits_and_features(model, val_images, batch_size, tta)
    return fit_detector(method, model.blocks, train_features, train_labels, val_features, val_logits, flag_rate,
                        augmented=augment is not None and augment.enabled)


def reference_features(model: OODFeatures, images: np.ndarray, labels: np.ndarray, batch_size: int = 64,
                       augment: Optional[AugmentConfig] = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (and labels) the Gaussians are fitted on: the training images, and with ``augment``
    also an augmented copy of each, so that the variation the network was trained to ignore
    (small rotations, shifts, zooms, brightness and contrast) counts as familiar."""
    features = logits_and_features(model, images, batch_size)[1]
    if augment is None or not augment.enabled:
        return features, labels
    copies = logits_and_features(model, augmented_copies(images, augment), batch_size)[1]
    return np.concatenate([features, copies]), np.concatenate([labels, labels])


def ood_columns(scores: Optional[np.ndarray], info: ModelInfo, n: int) -> list[dict]:
    """The ``ood_score`` and ``in_distribution`` columns of ``n`` prediction rows (None without a detector)."""
    if scores is None:
        return [{"ood_score": None, "in_distribution": None}] * n
    threshold = info.extras["ood"]["threshold"]
    return [{"ood_score": round(float(s), 4), "in_distribution": bool(s <= threshold)} for s in scores]
