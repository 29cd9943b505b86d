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

``knn-grid`` (for near foreign inputs: X-rays of adults from other hospitals): the channel
means of the scales before the last, over a 4 x 4 grid of image cells, each scale's vector
L2-normalised, concatenated and projected onto the training images' top principal components;
the score is the distance to the 10th nearest training image (the kNN score of Sun et al.,
2022, on features that keep where in the image a pattern is). Single-domain training makes
the last stage and the whole-image means keep little besides the class evidence; measured on
the shipped model (``benchmarks/results/near_ood.md``) it flags 99% of ``adult_cxr_covid``
(a development set) against 73% for the multi-scale Mahalanobis, with every far set and
transformed X-ray flagged.

Scoring is a function of ``(features, logits)`` numpy arrays only, so the same
detector serves PyTorch and exported (ONNX) models whose "features" output
comes from :class:`OODFeatures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.utils.extmath import randomized_svd

from medcls.config import AugmentConfig
from medcls.models.checkpoint import ModelInfo, OODState
from medcls.ood.features import OODFeatures, logits_and_features, reference_features

METHODS = ("mahalanobis-multiscale", "mahalanobis-early", "mahalanobis-penultimate", "knn-grid", "energy",
           "max-logit")
# ``knn-grid``'s stated rule: 4 x 4 cells per scale, the 10th nearest training image (k of the
# kNN score as benchmarks/near_ood.py first measured it), 64 principal components (64 numbers
# per training image in the checkpoint; 32 to 256 and no projection measure alike).
GRIDS = {"knn-grid": 4}  # methods whose features are means over grid cells; the others: 1 (whole image)
KNN_K = 10
KNN_DIMS = 64


def early_blocks(blocks: list[int]) -> range:
    """``mahalanobis-early``'s blocks: every scale but the last, and not the penultimate features.
    Single-domain training collapses the later features onto the class evidence; measured on the
    shipped model (``benchmarks/results/near_ood.md``), the earlier scales separate adult X-rays
    from other hospitals better (79% flagged against 73%) with fewer test images flagged (5.3%
    against 7.4%) and every far set still flagged."""
    return range(len(blocks) - 2) if len(blocks) > 2 else range(len(blocks))


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
class Neighbours:
    """``knn-grid``'s reference: the training images' features of ``blocks``, each block
    L2-normalised, concatenated, centred on ``mean`` and projected by ``projection``."""

    blocks: list[int]  # the feature blocks read
    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (D, d): the top principal components
    reference: np.ndarray  # (N, d): the training images
    k: int = KNN_K

    @staticmethod
    def joined(features: np.ndarray, edges: np.ndarray, blocks: list[int]) -> np.ndarray:
        """``blocks`` of ``features``, each L2-normalised (so that every scale counts alike), side by side."""
        parts = [features[:, edges[b]:edges[b + 1]].astype(np.float64) for b in blocks]
        return np.concatenate([p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts], 1)

    @classmethod
    def fit(cls, features: np.ndarray, edges: np.ndarray, blocks: list[int], k: int = KNN_K,
            dims: int = KNN_DIMS) -> "Neighbours":
        x = cls.joined(features, edges, blocks)
        mean = x.mean(axis=0)
        dims = min(dims, *x.shape)
        # seeded randomized SVD: the same components on every run, seconds on thousands of wide rows
        _, _, vt = randomized_svd(x - mean, dims, random_state=0)
        projection = vt.T
        return cls(list(blocks), mean, projection, (x - mean) @ projection, min(k, len(x)))

    def distance(self, features: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Euclidean distance to the ``k``-th nearest reference image, in the projected space."""
        q = (self.joined(features, edges, self.blocks) - self.mean) @ self.projection.astype(np.float64)
        ref = self.reference.astype(np.float64)
        d2 = (q ** 2).sum(axis=1)[:, None] - 2 * q @ ref.T + (ref ** 2).sum(axis=1)[None]  # (N, references)
        return np.sqrt(np.maximum(np.partition(d2, self.k - 1, axis=1)[:, self.k - 1], 0.0))

    def to_state(self) -> dict:
        return {"blocks": list(self.blocks), "k": int(self.k),
                **{name: torch.from_numpy(getattr(self, name).astype(np.float32))
                   for name in ("mean", "projection", "reference")}}

    @classmethod
    def from_state(cls, state: dict) -> "Neighbours":
        arrays = {name: np.asarray(state[name], np.float32) for name in ("mean", "projection", "reference")}
        return cls(list(state["blocks"]), k=int(state["k"]), **arrays)


@dataclass
class OODDetector:
    """A fitted out-of-distribution score and its threshold (higher score = less familiar)."""

    method: str
    threshold: float
    flag_rate: float  # fraction of validation images flagged at ``threshold``
    blocks: list[int]  # sizes of the feature blocks (scales..., penultimate), see OODFeatures
    gaussians: dict[int, Gaussians] = field(default_factory=dict)  # block index -> its Gaussians
    augmented: bool = False  # the Gaussians saw augmented copies of the training images too
    grid: int = 1  # features over grid x grid image cells per scale (OODFeatures(grid=...))
    neighbours: Optional[Neighbours] = None  # knn-grid's reference images

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
        if self.neighbours is not None:
            return self.neighbours.distance(features, edges)
        return np.max([g.distance(features[:, edges[b]:edges[b + 1]]) for b, g in self.gaussians.items()], axis=0)

    def set_threshold(self, features: np.ndarray, logits: np.ndarray, flag_rate: float) -> None:
        """Re-scale each block and set the threshold so that ``flag_rate`` of these in-distribution
        images are flagged (validation when fitted; a site's own images after ``medcls adapt``,
        whose new BatchNorm statistics move every feature)."""
        edges = np.cumsum([0, *self.blocks])
        for b, g in self.gaussians.items():
            g.scale = 1.0
            g.scale = float(np.quantile(g.distance(features[:, edges[b]:edges[b + 1]]), 1.0 - flag_rate))
        self.threshold = float(np.quantile(self.score(features, logits), 1.0 - flag_rate))
        self.flag_rate = flag_rate

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return scores <= self.threshold

    def to_state(self) -> OODState:
        """The checkpoint's record: plain values and tensors."""
        return OODState(self.method, float(self.threshold), float(self.flag_rate), list(self.blocks),
                        [{"block": b, "means": torch.from_numpy(g.means.astype(np.float32)),
                          "whitening": torch.from_numpy(g.whitening.astype(np.float32)), "scale": float(g.scale)}
                         for b, g in self.gaussians.items()], self.augmented, self.grid,
                        None if self.neighbours is None else self.neighbours.to_state())

    @classmethod
    def from_state(cls, state: OODState) -> "OODDetector":
        # tensors in a checkpoint, nested lists in an ONNX file's JSON metadata
        gaussians = {g["block"]: Gaussians(np.asarray(g["means"], np.float32), np.asarray(g["whitening"], np.float32),
                                           g["scale"]) for g in state.gaussians}
        neighbours = None if state.neighbours is None else Neighbours.from_state(state.neighbours)
        return cls(state.method, state.threshold, state.flag_rate, list(state.blocks), gaussians, state.augmented,
                   state.grid, neighbours)

    @classmethod
    def from_info(cls, info: ModelInfo) -> Optional["OODDetector"]:
        """The detector stored in a checkpoint, or None for models trained without one."""
        return cls.from_state(info.ood) if info.ood is not None else None


def fit_detector(method: str, blocks: list[int], train_features: np.ndarray, train_labels: np.ndarray,
                 val_features: np.ndarray, val_logits: np.ndarray, flag_rate: float,
                 augmented: bool = False) -> OODDetector:
    """Fit ``method`` on training features (``augmented``: they include augmented copies; computed
    with :class:`OODFeatures` at the method's grid, :func:`feature_grid`); set its threshold to flag
    ``flag_rate`` of validation."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r} (known: {', '.join(METHODS)})")
    detector = OODDetector(method, 0.0, flag_rate, list(blocks), augmented=augmented, grid=GRIDS.get(method, 1))
    used = {"mahalanobis-multiscale": range(len(blocks)), "mahalanobis-early": early_blocks(blocks),
            "mahalanobis-penultimate": [len(blocks) - 1]}
    edges = np.cumsum([0, *blocks])
    for b in used.get(method, []):
        detector.gaussians[b] = Gaussians.fit(train_features[:, edges[b]:edges[b + 1]], train_labels)
    if method == "knn-grid":
        detector.neighbours = Neighbours.fit(train_features, edges, list(early_blocks(blocks)))
    detector.set_threshold(val_features, val_logits, flag_rate)
    return detector


def fit_ood(net: torch.nn.Module, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
            flag_rate: float = 0.05, method: str = "mahalanobis-multiscale", batch_size: int = 64,
            tta: bool = False, augment: Optional[AugmentConfig] = None) -> OODDetector:
    """Fit the OOD detector of a trained ``net`` (training images, unaugmented, plus one copy of each
    augmented by ``augment`` if given; threshold on validation, with the logits the model predicts
    with: TTA-averaged if ``tta``)."""
    grid = GRIDS.get(method, 1)
    with OODFeatures(net, train_images.shape[1], train_images.shape[3], grid=grid) as model:  # taps leave ``net`` after
        train_features, train_labels = reference_features(model, train_images, train_labels, batch_size, augment)
        val_logits, val_features = logits_and_features(model, val_images, batch_size, tta)
    return fit_detector(method, model.blocks, train_features, train_labels, val_features, val_logits, flag_rate,
                        augmented=augment is not None and augment.enabled)


def feature_grid(info: ModelInfo) -> int:
    """The grid :class:`OODFeatures` must pool over for ``info``'s detector (1 without one)."""
    return info.ood.grid if info.ood is not None else 1


def ood_columns(scores: Optional[np.ndarray], info: ModelInfo, n: int) -> list[dict]:
    """The ``ood_score`` and ``in_distribution`` columns of ``n`` prediction rows (None without a detector)."""
    if scores is None:
        return [{"ood_score": None, "in_distribution": None}] * n
    threshold = info.ood.threshold
    return [{"ood_score": round(float(s), 4), "in_distribution": bool(s <= threshold)} for s in scores]
