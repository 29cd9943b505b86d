"""The Kermany test folder treated as a new site: what ``medcls calibrate`` and ``medcls adapt``
do for the shipped model there, measured on images the fit never saw.

Protocol: the 624 test images are split by patient into 5 folds (class shares kept). For each
fold, the fold (20%) is the site's "local sample": the threshold and temperature are refitted
on its labels (calibrate), or the BatchNorm statistics on its images without labels (adapt),
or both (adapt, then calibrate); the other 80% are scored, with 95% bootstrap intervals. The
standard figure (the model as shipped, on all 624 and on the same 80%) sits beside it. Also:
AdaBN on all 624 test images at once (transductive: the images it is scored on), and the OOD
flag's rate on the scored images, on adult X-rays (``adult_cxr_covid``) and on fundus photos
before and after adaptation. Writes ``benchmarks/results/site_calibration.{json,md}``.

    PYTHONPATH=src python benchmarks/site_calibration.py [--folds 5] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from medcls.assets import shipped_model
from medcls.data.images import expand_paths
from medcls.evaluation.evaluate import score
from medcls.inference.predictor import Predictor
from medcls.metrics.classification import bootstrap_ci
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.site.adapt import adabn
from medcls.site.calibrate import site_decision
from medcls.site.sample import group_folds, labelled_sample, unlabelled_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
KEYS = ("accuracy", "recall", "specificity", "roc_auc")


def figures(y, logits, info, draws):
    probs = logits_to_probs(logits, info.temperature)
    m = score(y, probs, info)
    ci = bootstrap_ci(lambda i: score(y[i], probs[i], info), len(y), draws)
    return {k: {"value": float(m[k]), "ci95": ci.get(k)} for k in KEYS}


def outputs(net, info, images):
    """Logits and OOD features (one pass; TTA as the model predicts)."""
    return Predictor(net, info, 32).backend.outputs(images)


def flagged(detector, logits, features) -> float:
    return float(np.mean(~detector.in_distribution(detector.score(features, logits))))


def mean_ci(rows, key):
    values = [r[key]["value"] for r in rows]
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "per_fold": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--fundus", type=int, default=100, help="fundus photos scored (far OOD)")
    args = parser.parse_args()
    t0 = time.time()
    model = shipped_model()
    net, info = load_checkpoint(model)
    site = labelled_sample(DATA / "chest_xray" / "test", info, quiet=True)
    adults = unlabelled_images(DATA / "adult_cxr_covid", info, quiet=True)
    predictor = Predictor(net, info)
    photos = expand_paths([DATA / "retinopathy"])
    fundus = np.stack([predictor.preprocess(photos[i])
                       for i in np.random.default_rng(0).choice(len(photos), args.fundus, replace=False)])
    y = site.labels
    logits, features = outputs(net, info, site.images)
    detector = predictor.ood
    shipped = {"all_624": figures(y, logits, info, args.bootstrap),
               "ood_flagged": {"test": flagged(detector, logits, features),
                               "adult_cxr_covid": flagged(detector, *outputs(net, info, adults.images)),
                               "fundus": flagged(detector, *outputs(net, info, fundus))}}
    print(f"shipped on all {len(y)}: accuracy {shipped['all_624']['accuracy']['value']:.3f} "
          f"({time.time() - t0:.0f} s)", flush=True)

    folds = group_folds(y, site.groups, args.folds, seed=0)
    rows = []
    for f, cal in enumerate(folds):
        rest = np.setdiff1d(np.arange(len(y)), cal)
        assert not set(site.groups[i] for i in cal) & set(site.groups[i] for i in rest)
        calibrated, why = site_decision(logits[cal], y[cal], info)
        adapted_net = load_checkpoint(model)[0]
        adabn(adapted_net, site.images[cal])
        a_logits_cal, a_feat_cal = outputs(adapted_net, info, site.images[cal])
        a_logits, a_feat = outputs(adapted_net, info, site.images[rest])
        both, _ = site_decision(a_logits_cal, y[cal], info)
        site_detector = Predictor(adapted_net, info).ood
        old = {"test": flagged(site_detector, a_logits, a_feat)}
        site_detector.set_threshold(a_feat_cal, a_logits_cal, info.ood.flag_rate)
        adult_out, fundus_out = outputs(adapted_net, info, adults.images), outputs(adapted_net, info, fundus)
        rows.append({
            "fold": f, "n_calibrate": int(len(cal)), "n_scored": int(len(rest)),
            "calibrate_counts": {c: int((y[cal] == k).sum()) for k, c in enumerate(info.classes)},
            "shipped": figures(y[rest], logits[rest], info, args.bootstrap),
            "calibrated": figures(y[rest], logits[rest], calibrated, args.bootstrap),
            "adapted": figures(y[rest], a_logits, info, args.bootstrap),
            "adapted_calibrated": figures(y[rest], a_logits, both, args.bootstrap),
            "threshold": calibrated.threshold, "temperature": calibrated.temperature, "threshold_reason": why,
            "adapted_threshold": both.threshold,
            "ood_flagged": {
                "before": {"test": flagged(detector, logits[rest], features[rest])},
                "adapted_old_threshold": {**old, "adult_cxr_covid": flagged(Predictor(adapted_net, info).ood,
                                                                            *adult_out)},
                "adapted_reset": {"test": flagged(site_detector, a_logits, a_feat),
                                  "adult_cxr_covid": flagged(site_detector, *adult_out),
                                  "fundus": flagged(site_detector, *fundus_out)}},
        })
        r = rows[-1]
        print(f"fold {f}: shipped {r['shipped']['accuracy']['value']:.3f}, calibrated "
              f"{r['calibrated']['accuracy']['value']:.3f}, adapted {r['adapted']['accuracy']['value']:.3f}, "
              f"both {r['adapted_calibrated']['accuracy']['value']:.3f} ({time.time() - t0:.0f} s)", flush=True)

    transductive = load_checkpoint(model)[0]
    adabn(transductive, site.images)
    t_logits, t_feat = outputs(transductive, info, site.images)
    summary = {name: {k: mean_ci([r[name] for r in rows], k) for k in KEYS}
               for name in ("shipped", "calibrated", "adapted", "adapted_calibrated")}
    result = {"model": str(model), "site": str(DATA / "chest_xray" / "test"), "folds": args.folds,
              "bootstrap": args.bootstrap, "grouping": "patient id from the file name (kermany_patient)",
              "shipped": shipped, "mean_over_folds": summary, "folds_detail": rows,
              "adabn_all_624_transductive": figures(y, t_logits, info, args.bootstrap),
              "seconds": round(time.time() - t0, 1), "machine": machine()}
    write_results("site_calibration", result, markdown(result))


def markdown(r: dict) -> str:
    names = {"shipped": "as shipped (standard figure)", "calibrated": "site-calibrated (threshold + temperature)",
             "adapted": "AdaBN on the fold's images", "adapted_calibrated": "AdaBN, then site-calibrated"}
    lines = [f"# The Kermany test folder as a new site ({r['folds']} folds by patient: fit on 20%, score 80%)", "",
             "Written by `benchmarks/site_calibration.py`. Each fold's 20% is the site's local sample (labels used "
             "only by calibration); the other 80% are scored. Mean over folds, range over folds; intervals are 95% "
             f"bootstrap intervals ({r['bootstrap']} draws) of each fold's 80%.", "",
             "| model | accuracy | sensitivity | specificity | ROC AUC |", "|---|---|---|---|---|"]
    for name, label in names.items():
        s = r["mean_over_folds"][name]
        lines.append(f"| {label} | " + " | ".join(f"{s[k]['mean']:.3f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})"
                                                   for k in KEYS) + " |")
    a = r["shipped"]["all_624"]
    t = r["adabn_all_624_transductive"]
    lines += ["", "| all 624 test images | " + " | ".join(KEYS) + " |", "|---|---|---|---|---|"]
    for label, s in (("as shipped", a), ("AdaBN on all 624 (transductive)", t)):
        lines.append(f"| {label} | " + " | ".join(f"{s[k]['value']:.3f} [{s[k]['ci95'][0]:.3f}, {s[k]['ci95'][1]:.3f}]"
                                                  for k in KEYS) + " |")
    lines += ["", "Per fold (site-calibrated, on its 80%):", "",
              "| fold | sample (NORMAL/PNEUMONIA) | threshold | temperature | accuracy [95% CI] | sensitivity | "
              "specificity |", "|---|---|---|---|---|---|---|"]
    for f in r["folds_detail"]:
        c = f["calibrated"]
        counts = "/".join(str(v) for v in f["calibrate_counts"].values())
        lines.append(f"| {f['fold']} | {counts} | {f['threshold']:.3f} | {f['temperature']:.3f} | "
                     f"{c['accuracy']['value']:.3f} [{c['accuracy']['ci95'][0]:.3f}, {c['accuracy']['ci95'][1]:.3f}] | "
                     + " | ".join(f"{c[k]['value']:.3f} [{c[k]['ci95'][0]:.3f}, {c[k]['ci95'][1]:.3f}]"
                                  for k in ("recall", "specificity")) + " |")
    o = r["shipped"]["ood_flagged"]
    mean = {k: np.mean([f["ood_flagged"]["adapted_reset"][k] for f in r["folds_detail"]])
            for k in ("test", "adult_cxr_covid", "fundus")}
    old = {k: np.mean([f["ood_flagged"]["adapted_old_threshold"][k] for f in r["folds_detail"]])
           for k in ("test", "adult_cxr_covid")}
    lines += ["", "OOD flag rate (share flagged; after AdaBN: mean over folds, on the scored 80% for the test folder):",
              "", "| | Kermany test | adult_cxr_covid | fundus |", "|---|---|---|---|",
              f"| as shipped | {o['test']:.1%} | {o['adult_cxr_covid']:.1%} | {o['fundus']:.1%} |",
              f"| AdaBN, stored OOD threshold | {old['test']:.1%} | {old['adult_cxr_covid']:.1%} | - |",
              f"| AdaBN, OOD re-set on the fold (5% of it) | {mean['test']:.1%} | {mean['adult_cxr_covid']:.1%} | "
              f"{mean['fundus']:.1%} |", "",
              f"{r['seconds']:.0f} s ({r['machine']['cpus']} CPUs, load {r['machine']['load_average'][0]:.1f}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
