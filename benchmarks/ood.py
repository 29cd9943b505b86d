"""Out-of-distribution benchmark for one trained run: the fraction of images
flagged and the OOD AUROC (against the run's test split) for

- in-distribution: the validation and test splits;
- far: the other data set (fundus photographs for an X-ray model, X-rays for a
  fundus model) and synthetic images (noise, flat, gradients, rendered text);
- near: test images heavily rotated, inverted, or cropped to a corner;

for the detector stored in the checkpoint and, for comparison, the other scores
(fitted the same way: training features, validation threshold); and the extra
inference time the flag costs. Writes ``benchmarks/results/ood.json`` and ``.md``.

    PYTHONPATH=src python benchmarks/ood.py runs/pneumonia-quick-YYYYMMDD-HHMMSS
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medcls.config import load_config
from medcls.evaluation.evaluate import checkpoint_data, resolve_checkpoint
from medcls.inference.predictor import Predictor, decide, expand_paths
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.ood.detector import (
    METHODS,
    OODDetector,
    OODFeatures,
    fit_detector,
    logits_and_features,
    reference_features,
)
from medcls.ood.evaluation import evaluate_ood, separation
from medcls.ood.probes import (
    SYNTHETIC,
    TRANSFORMS,
    synthetic_images,
    transformed_images,
)

HERE = Path(__file__).resolve().parent
OTHER = {"pneumonia": "retinopathy", "retinopathy": "chest_xray"}
TARGETS = {"test_flagged_max": 0.05, "far_flagged_min": 0.99, "extra_time_max": 0.10}


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def flag_cost(run: Path, images: np.ndarray, files: list[Path], repeats: int, score) -> dict:
    """Inference time with and without the flag: forward pass alone, and files end to end;
    and the flag's own arithmetic (``score()`` on features and logits) timed alone.

    The baseline is a separately loaded model without a detector (no feature hooks). The
    machine is shared with other jobs, so wall time mostly measures the wait for a core:
    this runs on one thread and measures CPU time, the median of ``repeats`` interleaved runs."""
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS too
    plain_net, plain_info = load_checkpoint(run)
    plain_info.ood = None
    plain, flagged = Predictor(plain_net, plain_info), Predictor.from_checkpoint(run)
    out = {"n_images": len(images), "n_files": len(files), "repeats": repeats, "threads": 1}
    for name, plain_fn, flag_fn in [
        ("forward", lambda: plain.logits(images), lambda: flagged.outputs(images)),
        ("files", lambda: plain.predict(files), lambda: flagged.predict(files)),
    ]:
        plain_fn(), flag_fn()  # warm-up
        pairs = [(cpu_seconds(plain_fn), cpu_seconds(flag_fn)) for _ in range(repeats)]
        t_plain, t_flag = statistics.median(p for p, _ in pairs), statistics.median(f for _, f in pairs)
        out[name] = {"cpu_seconds_without": round(t_plain, 4), "cpu_seconds_with": round(t_flag, 4),
                     "extra": round(t_flag / t_plain - 1, 4)}
    t_score = statistics.median(cpu_seconds(score) for _ in range(repeats))
    out["scoring"] = {"cpu_seconds": round(t_score, 5),
                      "of_forward": round(t_score / out["forward"]["cpu_seconds_without"], 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder (holding model.pt and manifest.csv)")
    parser.add_argument("--foreign", type=Path, help="the other data set (default: ../shared/data/<other>)")
    parser.add_argument("--n-foreign", type=int, help="sample this many foreign images (default: all)")
    parser.add_argument("--n", type=int, default=200, help="images per synthetic and transformed set")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = parser.parse_args(argv)

    net, info = load_checkpoint(args.run)
    stored = OODDetector.from_info(info)
    if stored is None:
        parser.error(f"{args.run} has no OOD detector; train it with this version of medcls")
    data = checkpoint_data(resolve_checkpoint(args.run)[0], info, quiet=True)
    predictor = Predictor(net, info)
    model = OODFeatures(net, info.image_size, info.in_channels)

    def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return logits_and_features(model, images, 64)

    def preprocess(sources) -> np.ndarray:
        return np.stack([predictor.preprocess(s) for s in sources])

    rng = np.random.default_rng(0)
    test_paths = data.paths("test")
    sample = [test_paths[i] for i in np.sort(rng.choice(len(test_paths), min(args.n, len(test_paths)), False))]
    foreign_root = args.foreign or Path(data.index.root).parent / OTHER.get(data.index.name, "retinopathy")
    foreign = expand_paths([foreign_root])
    if args.n_foreign and args.n_foreign < len(foreign):
        foreign = [foreign[i] for i in np.sort(rng.choice(len(foreign), args.n_foreign, False))]

    sets: dict[str, tuple[str, np.ndarray]] = {
        "validation": ("in-distribution", data.images("val")),
        "test": ("in-distribution", data.images("test")),
        f"foreign data set ({foreign_root.name})": ("far", preprocess(foreign)),
    }
    for kind in SYNTHETIC:
        sets[f"synthetic: {kind}"] = ("far", preprocess(png_bytes(im) for im in synthetic_images(kind, args.n)))
    for kind in TRANSFORMS:
        sets[f"X-ray test, {kind}" if data.index.name == "pneumonia" else f"test, {kind}"] = (
            "near", preprocess(png_bytes(im) for im in transformed_images(kind, sample)))

    start = time.perf_counter()
    _, train_features = outputs(data.images("train"))
    train_seconds = time.perf_counter() - start
    val_logits, val_features = outputs(data.images("val"))
    detectors = {m: fit_detector(m, model.blocks, train_features, data.labels["train"], val_features, val_logits,
                                 stored.flag_rate) for m in METHODS if m != stored.method}
    # the stored method the other way: with augmented copies of the training images if it had none, or without
    augment = None if stored.augmented else load_config(args.run / "config.yaml").augment
    variant_features, variant_labels = reference_features(model, data.images("train"), data.labels["train"], 64,
                                                          augment)
    variant = f"{stored.method}, {'without' if stored.augmented else 'with'} augmented copies"
    stored_name = f"{stored.method}{', with augmented copies' if stored.augmented else ''} (stored)"
    detectors = {stored_name: stored,
                 variant: fit_detector(stored.method, model.blocks, variant_features, variant_labels, val_features,
                                       val_logits, stored.flag_rate, augment is not None),
                 **detectors}
    scored, by_class = {}, {}
    for name, (group, images) in sets.items():
        logits, features = outputs(images)
        scored[name] = (group, {m: d.score(features, logits) for m, d in detectors.items()})
        if group == "in-distribution":  # which classes the stored flag falls on, and is it on the wrong answers?
            labels = data.labels["val" if name == "validation" else name]
            model_logits = logits_and_features(model, images, 64, tta=info.tta)[0]  # as the model predicts
            correct = decide(logits_to_probs(model_logits, info.temperature), info) == labels
            by_class[name] = evaluate_ood(predictor, scored[name][1][stored_name], (), labels, correct)["test"]
    test_scores = scored["test"][1]
    results = {}
    for name, (group, scores) in scored.items():
        results[name] = {"group": group, "n": len(next(iter(scores.values()))),
                         **{m: separation(test_scores[m], s, detectors[m].threshold) for m, s in scores.items()}}
    for name in ("validation", "test"):  # AUROC of a set against itself says nothing
        for m in detectors:
            del results[name][m]["auroc"]

    timing_images = data.images("test")[:512]
    z, f = outputs(timing_images)
    cost = flag_cost(args.run, timing_images, test_paths[:256], args.repeats, lambda: stored.score(f, z))
    far = [r[stored_name]["flagged"] for r in results.values() if r["group"] == "far"]
    log = json.loads((args.run / "training.json").read_text())
    report = {
        "run": str(args.run), "arch": info.arch, "image_size": info.image_size, "color_mode": info.color_mode,
        "n_train": int(len(data.labels["train"])), "monitor": log["monitor"], "best_val": log["best_epoch_score"],
        "dataset": data.index.name, "detector": {"method": stored_name, "threshold": stored.threshold,
                                                 "target_flag_rate": stored.flag_rate},
        "methods": list(detectors), "sets": results, "stored_in_distribution": by_class, "flag_cost": cost,
        "train_feature_seconds": round(train_seconds, 2), "targets": TARGETS,
        "verdict": {"test_flagged": results["test"][stored_name]["flagged"], "far_flagged_min": min(far),
                    "extra_time_forward": cost["forward"]["extra"], "extra_time_files": cost["files"]["extra"]},
        "command": "PYTHONPATH=src python benchmarks/ood.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ood" if data.index.name == "pneumonia" else f"ood-{data.index.name}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    methods = r["methods"]
    lines = [f"# Out-of-distribution flag: {r['dataset']} {r['arch']} ({r['image_size']} px, {r['color_mode']})", "",
             f"Run `{r['run']}`: {r['n_train']} training images, best {r['monitor']} {r['best_val']:.4f}. "
             f"Stored detector: **{r['detector']['method']}**, threshold "
             f"{r['detector']['threshold']:.4f}, set on validation to flag {r['detector']['target_flag_rate']:.0%}. "
             "The other scores are fitted the same way (training features, validation threshold) for comparison.",
             "", "| images | kind | n | " + " | ".join(f"{m} flagged | {m} AUROC" for m in methods) + " |",
             "|---|---|---:|" + "---:|---:|" * len(methods)]
    for name, s in r["sets"].items():
        cells = []
        for m in methods:
            auroc = s[m].get("auroc")
            cells += [f"{s[m]['flagged']:.1%}", "" if auroc is None else f"{auroc:.4f}"]
        lines.append(f"| {name} | {s['group']} | {s['n']} | " + " | ".join(cells) + " |")
    c, v, t = r["flag_cost"], r["verdict"], r["targets"]
    lines += ["", "Far: the other data set and synthetic images (noise, flat, gradients, rendered text); near: the "
              "test split's images rotated by 90 or 180 degrees, inverted, or cropped to their top-left ninth. "
              "AUROC: the OOD score separating the set from the test split (1 = perfectly).", "",
              "## In-distribution images flagged, by class (stored detector)", "",
              "| images | class | n | flagged |", "|---|---|---:|---:|"]
    for name, d in r["stored_in_distribution"].items():
        lines += [f"| {name} | {k} | {c_['n']} | {c_['flagged']:.1%} |" for k, c_ in d["by_class"].items()]
    lines += [""] + [f"- {name}: accuracy {d['accuracy']['in_distribution']:.1%} on unflagged images, "
                     f"{d['accuracy']['flagged']:.1%} on flagged ones" for name, d in r["stored_in_distribution"].items()]
    lines += ["",
              "## Cost of the flag", "",
              "| measured | CPU s without flag | CPU s with flag | extra |", "|---|---:|---:|---:|"]
    for key, what in (("forward", f"forward pass, {c['n_images']} preprocessed images"),
                      ("files", f"`Predictor.predict`, {c['n_files']} files (decode included)")):
        m = c[key]
        lines.append(f"| {what} | {m['cpu_seconds_without']} | {m['cpu_seconds_with']} | {m['extra']:+.1%} |")
    lines += ["", f"CPU time on one thread, median of {c['repeats']} interleaved repeats (the 2-core machine is "
              "shared with other jobs, so wall time would mostly measure waiting). The flag's cost is the channel "
              "means taken at each scale during the forward pass plus the score itself (numpy, from features and "
              f"logits): {c['scoring']['cpu_seconds']} s for the {c['n_images']} images, "
              f"{c['scoring']['of_forward']:.2%} of their forward pass.", "",
              "## Targets", "",
              f"- test split flagged: {v['test_flagged']:.1%} (target <= {t['test_flagged_max']:.0%})",
              f"- least-flagged far set: {v['far_flagged_min']:.1%} (target >= {t['far_flagged_min']:.0%})",
              f"- extra inference time: forward {v['extra_time_forward']:+.1%}, files {v['extra_time_files']:+.1%} "
              f"(target <= {t['extra_time_max']:.0%})", "", f"Reproduce: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
