"""Near out-of-distribution scores for the shipped model: which score flags adult X-rays from
other hospitals (``adult_cxr_covid``, a development set) while flagging 5% of validation by
construction? Each score's threshold is the 95th percentile of its validation scores; the
flag rate is reported on the Kermany test folder, adult X-rays, fundus photos, synthetic
images and transformed test X-rays, with the adult set's AUROC against validation.

Scores (all fitted on a seeded sample of the training images, never on the sets measured):

- ``stored``: the shipped detector (multi-scale Mahalanobis: channel means at each scale and
  the penultimate features, class-conditional Gaussians, the largest scaled distance);
- ``block<i>``: Mahalanobis on one feature block alone (0 = the first scale ... the last is the
  penultimate layer): where in the network the domains still differ;
- ``knn``: distance to the 10th nearest training image in L2-normalised penultimate features
  (Sun et al., 2022), and ``knn-blocks``: the same on all blocks, each normalised;
- ``residual``: norm of the penultimate features outside their principal subspace (95% of the
  training variance; the residual part of ViM, Wang et al., 2022);
- ``input``: Mahalanobis on input statistics (intensity percentiles, mean, std, share of
  black and white pixels, edge energy), the domain cues a single-domain network learns to ignore;
- ``stored+input``, ``stored+knn``, ``block0+block3``, ``blocks0-3`` (the stored detector's rule on
  the scales before the last block only: ``eval.ood_method=mahalanobis-early``), ``block0+stored``:
  the largest of the parts, each divided by its validation threshold.

    PYTHONPATH=src python benchmarks/near_ood.py [--train 2000]

Writes ``benchmarks/results/near_ood.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from medcls.assets import shipped_model
from medcls.data.images import expand_paths, load_image
from medcls.evaluation.evaluate import checkpoint_data
from medcls.models.checkpoint import load_checkpoint
from medcls.ood.detector import Gaussians, OODDetector
from medcls.ood.features import OODFeatures, logits_and_features
from medcls.ood.probes import SYNTHETIC, TRANSFORMS, synthetic_images, transformed_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FLAG_RATE = 0.05


def input_stats(images: np.ndarray) -> np.ndarray:
    """Per image: intensity percentiles, mean, std, share of near-black and near-white pixels, edge energy."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    pct = np.percentile(x, [1, 5, 25, 50, 75, 95, 99], axis=1).T
    img = images[..., 0].astype(np.float64) / 255
    edges = np.abs(np.diff(img, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(img, axis=2)).mean(axis=(1, 2))
    return np.column_stack([pct, x.mean(1), x.std(1), (x < 0.04).mean(1), (x > 0.96).mean(1), edges])


class Mahalanobis:
    """One Gaussian (shared covariance, Ledoit-Wolf), distance from its mean."""

    def __init__(self, features: np.ndarray):
        self.g = Gaussians.fit(features, np.zeros(len(features), int))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.g.distance(features)


class KNN:
    def __init__(self, features: np.ndarray, k: int = 10):
        self.ref, self.k = self.normalise(features), k

    @staticmethod
    def normalise(f: np.ndarray) -> np.ndarray:
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        sim = self.normalise(features) @ self.ref.T
        return 1 - np.sort(sim, axis=1)[:, -self.k]


class Residual:
    def __init__(self, features: np.ndarray, kept: float = 0.95):
        self.mean = features.mean(0)
        _, s, vt = np.linalg.svd(features - self.mean, full_matrices=False)
        d = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), kept)) + 1
        self.basis = vt[d:].T

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm((features - self.mean) @ self.basis, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="training images the new scores are fitted on")
    parser.add_argument("--n", type=int, default=50, help="images per synthetic and transformed set")
    parser.add_argument("--fundus", type=int, default=200)
    args = parser.parse_args()
    t0 = time.time()
    model = shipped_model()
    net, info = load_checkpoint(model)
    stored = OODDetector.from_info(info)
    data = checkpoint_data(model, info, DATA / "chest_xray", quiet=True)
    rng = np.random.default_rng(0)
    train_rows = np.sort(rng.choice(len(data.labels["train"]), min(args.train, len(data.labels["train"])),
                                    replace=False))
    load = lambda paths: np.stack([load_image(p, info.color_mode, info.image_size) for p in paths])  # noqa: E731
    pil = lambda imgs: np.stack([np.asarray(i.convert("L").resize((info.image_size,) * 2, Image.BILINEAR))[..., None]  # noqa: E731
                                 for i in imgs])
    photos = expand_paths([DATA / "retinopathy"])
    test_paths = data.paths("test")
    sets = {
        "validation": np.asarray(data.images("val")),
        "test": np.asarray(data.images("test")),
        "adult_cxr_covid": load(expand_paths([DATA / "adult_cxr_covid"])),
        "fundus": load([photos[i] for i in rng.choice(len(photos), args.fundus, replace=False)]),
        **{f"synthetic-{k}": pil(synthetic_images(k, args.n, seed=1)) for k in SYNTHETIC},
        **{f"xray-{k}": pil(transformed_images(k, [test_paths[i] for i in rng.choice(len(test_paths), args.n,
                                                                                      replace=False)]))
           for k in TRANSFORMS},
    }
    train_images = np.asarray(data.images("train"))[train_rows]
    with OODFeatures(net, info.image_size, info.in_channels) as wrapped:
        feats = {name: logits_and_features(wrapped, imgs, 32) for name, imgs in sets.items()}
        print(f"features of the measured sets ({time.time() - t0:.0f} s)", flush=True)
        train_logits, train_f = logits_and_features(wrapped, train_images, 32)
        blocks = wrapped.blocks
    print(f"features of {len(train_images)} training images ({time.time() - t0:.0f} s)", flush=True)
    edges = np.cumsum([0, *blocks])
    block = lambda f, b: f[:, edges[b]:edges[b + 1]]  # noqa: E731
    pen = len(blocks) - 1
    train_labels = data.labels["train"][train_rows]
    scores = {"stored": lambda name: stored.score(feats[name][1], feats[name][0])}
    for b in range(len(blocks)):
        g = Gaussians.fit(block(train_f, b), train_labels)
        scores[f"block{b}"] = lambda name, g=g, b=b: g.distance(block(feats[name][1], b))
    knn = KNN(block(train_f, pen))
    scores["knn"] = lambda name: knn(block(feats[name][1], pen))
    normalised = lambda f: np.concatenate([KNN.normalise(block(f, b)) for b in range(len(blocks))], 1)  # noqa: E731
    knn_all = KNN(normalised(train_f))
    scores["knn-blocks"] = lambda name: knn_all(normalised(feats[name][1]))
    residual = Residual(block(train_f, pen))
    scores["residual"] = lambda name: residual(block(feats[name][1], pen))
    stats = {name: input_stats(imgs) for name, imgs in sets.items()}
    inputs = Mahalanobis(input_stats(train_images))
    scores["input"] = lambda name: inputs(stats[name])
    values = {method: {name: fn(name) for name in sets} for method, fn in scores.items()}
    thresholds = {m: float(np.quantile(v["validation"], 1 - FLAG_RATE)) for m, v in values.items()}
    combinations = {"stored+input": ["stored", "input"], "stored+knn": ["stored", "knn"],
                    "block0+block3": ["block0", "block3"], "blocks0-3": ["block0", "block1", "block2", "block3"],
                    "block0+stored": ["block0", "stored"]}
    for name, parts in combinations.items():
        values[name] = {n: np.max([values[p][n] / thresholds[p] for p in parts], axis=0) for n in sets}
        thresholds[name] = float(np.quantile(values[name]["validation"], 1 - FLAG_RATE))
    table = {m: {"threshold": thresholds[m],
                 "flagged": {n: float(np.mean(v[n] > thresholds[m])) for n in sets},
                 "adult_auroc_vs_validation": float(roc_auc_score(
                     np.r_[np.zeros(len(v["validation"])), np.ones(len(v["adult_cxr_covid"]))],
                     np.r_[v["validation"], v["adult_cxr_covid"]]))}
             for m, v in values.items()}
    result = {"model": str(model), "flag_rate_on_validation": FLAG_RATE, "train_images_fitted": int(len(train_images)),
              "sizes": {n: int(len(s)) for n, s in sets.items()}, "blocks": blocks, "scores": table,
              "seconds": round(time.time() - t0, 1), "machine": machine()}
    write_results("near_ood", result, markdown(result))


def markdown(r: dict) -> str:
    sets = list(r["sizes"])
    short = {n: n.replace("synthetic-", "syn-").replace("adult_cxr_covid", "adult") for n in sets}
    lines = ["# Near out-of-distribution scores on the shipped model", "",
             f"Written by `benchmarks/near_ood.py`. Share flagged at each score's own threshold (flags "
             f"{r['flag_rate_on_validation']:.0%} of validation); new scores fitted on {r['train_images_fitted']} "
             f"training images; feature blocks {r['blocks']} (channel means per scale, then penultimate). "
             "`adult_cxr_covid` is a development set.", "",
             "| score | " + " | ".join(f"{short[n]} ({r['sizes'][n]})" for n in sets) + " | adult AUROC |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for m, s in r["scores"].items():
        lines.append(f"| {m} | " + " | ".join(f"{s['flagged'][n]:.1%}" for n in sets)
                     + f" | {s['adult_auroc_vs_validation']:.3f} |")
    lines += ["", f"{r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
