"""Out-of-distribution flag: "this input does not look like what I was trained on".

The score is the Mahalanobis distance (Lee et al., 2018) of an image's
penultimate-layer features to the nearest class mean, under class-conditional
Gaussians with one shared covariance, estimated with Ledoit-Wolf shrinkage on
the training images' features. Its threshold is the validation quantile that
flags a chosen fraction (default 5%) of in-distribution images.

Measured against energy and max-logit scores on fundus photographs, synthetic
images and transformed X-rays (``benchmarks/ood.py``), the Mahalanobis score is
the one that flags far-away inputs: a binary model has a single logit, so
logit-based scores only say how sure the classifier is, and it is often sure
about a flat grey square. See ``benchmarks/results/ood.md``.

Scoring is a function of ``(features, logits)`` numpy arrays only, so the same
detector serves PyTorch and exported (ONNX) models alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from medcls.checkpoint import ModelInfo
from medcls.data.prepared import to_model_input
from medcls.models.inference import WithFeatures

METHODS = ("mahalanobis", "energy", "max-logit")


@torch.inference_mode()
def logits_and_features(model: WithFeatures, images: np.ndarray, batch_size: int = 64
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, outputs)`` and penultimate features ``(N, D)`` for uint8 images ``(N, H, W, C)``."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        z, f = model(to_model_input(chunk))
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
class OODDetector:
    """A fitted out-of-distribution score and its threshold (higher score = less familiar)."""

    method: str
    threshold: float
    flag_rate: float  # fraction of validation images flagged at ``threshold``
    means: Optional[np.ndarray] = None  # (K, D) class means of training features (mahalanobis)
    whitening: Optional[np.ndarray] = None  # (D, D) W with W W^T = shared precision (mahalanobis)

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The OOD score of each image from its penultimate features and logits."""
        if self.method == "mahalanobis":
            z = features.astype(np.float64) @ self.whitening
            centres = self.means @ self.whitening
            d2 = ((z[:, None, :] - centres[None]) ** 2).sum(axis=2)
            return np.sqrt(d2.min(axis=1))
        z = _class_logits(logits)
        if self.method == "energy":
            top = z.max(axis=1)
            return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
        return -z.max(axis=1)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return scores <= self.threshold

    def to_state(self) -> dict:
        """Plain values and tensors, loadable with ``torch.load(weights_only=True)``."""
        state: dict = {"method": self.method, "threshold": float(self.threshold), "flag_rate": float(self.flag_rate)}
        if self.means is not None:
            state["means"] = torch.from_numpy(self.means)
            state["whitening"] = torch.from_numpy(self.whitening)
        return state

    @classmethod
    def from_state(cls, state: dict) -> "OODDetector":
        arrays = {k: state[k].numpy() for k in ("means", "whitening") if k in state}
        return cls(state["method"], state["threshold"], state["flag_rate"], **arrays)

    @classmethod
    def from_info(cls, info: ModelInfo) -> Optional["OODDetector"]:
        """The detector stored in a checkpoint, or None for models trained without one."""
        state = info.extras.get("ood")
        return cls.from_state(state) if state else None


def fit_detector(method: str, train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                 val_logits: np.ndarray, flag_rate: float) -> OODDetector:
    """Fit ``method`` on training features; set its threshold to flag ``flag_rate`` of validation."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r} (known: {', '.join(METHODS)})")
    detector = OODDetector(method, 0.0, flag_rate)
    if method == "mahalanobis":
        f = train_features.astype(np.float64)
        classes = np.unique(train_labels)
        means = np.stack([f[train_labels == k].mean(axis=0) for k in classes])
        centred = f - means[np.searchsorted(classes, train_labels)]
        # Shrinkage keeps the precision finite when ReLU units are dead or features collinear.
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
        eigval, eigvec = np.linalg.eigh(cov)
        detector.means = means
        detector.whitening = eigvec / np.sqrt(np.maximum(eigval, 1e-12 * eigval.max()))
    scores = detector.score(val_features, val_logits)
    detector.threshold = float(np.quantile(scores, 1.0 - flag_rate))
    return detector


def fit_ood(net: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
            flag_rate: float = 0.05, method: str = "mahalanobis", batch_size: int = 64) -> OODDetector:
    """Fit the OOD detector of a trained ``net`` (training images, unaugmented; threshold on validation)."""
    model = WithFeatures(net)
    _, train_features = logits_and_features(model, train_images, batch_size)
    val_logits, val_features = logits_and_features(model, val_images, batch_size)
    return fit_detector(method, train_features, train_labels, val_features, val_logits, flag_rate)


def ood_columns(scores: Optional[np.ndarray], info: ModelInfo, n: int) -> list[dict]:
    """The ``ood_score`` and ``in_distribution`` columns of ``n`` prediction rows (None without a detector)."""
    if scores is None:
        return [{"ood_score": None, "in_distribution": None}] * n
    threshold = info.extras["ood"]["threshold"]
    return [{"ood_score": round(float(s), 4), "in_distribution": bool(s <= threshold)} for s in scores]
