"""Reduced-precision inference of a trained model against its float32 export, on the
run's test split: int8 (ONNX Runtime static quantisation: QDQ, per-channel weights,
activations calibrated on validation images) and bf16 (the checkpoint compiled by
TorchInductor, ``medcls predict --compile``). Accuracy, sensitivity, specificity and
ROC AUC at the stored threshold, the OOD flag (fraction of test images flagged, and its
agreement with float32 image by image), batch-32 images/s and single-image latency.
Writes ``benchmarks/results/quantize.{json,md}``.

    PYTHONPATH=src python benchmarks/quantize.py runs/shipped [--stem quantize]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import roc_auc_score

from common import median_ms
from medcls.evaluation.evaluate import checkpoint_data, resolve_checkpoint
from medcls.inference.export import export_onnx
from medcls.inference.onnx_backend import INPUT_NAME, load_onnx
from medcls.inference.predictor import Predictor
from medcls.models.checkpoint import load_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.ood.detector import OODDetector

HERE = Path(__file__).resolve().parent


class Calibration(CalibrationDataReader):
    """Validation images, one batch of 8 at a time (the test split is not looked at)."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{INPUT_NAME: np.ascontiguousarray(images[i:i + 8])} for i in range(0, len(images), 8)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(fp32: Path, out: Path, calibration_images: np.ndarray) -> Path:
    """``fp32`` (an exported ONNX file) statically quantised to int8 at ``out``."""
    prepared = out.with_name(out.stem + "-prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))  # shape inference and graph fusions, as ORT advises
    quantize_static(str(prepared), str(out), Calibration(calibration_images), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def measure(backend, size_bytes: int, images: np.ndarray, labels: np.ndarray, info) -> dict:
    backend.outputs(images[:32])  # warm-up (and compilation)
    backend.outputs(images[:1])
    start = time.perf_counter()
    logits, features = backend.outputs(images)
    per_s = len(images) / (time.perf_counter() - start)
    p = logits_to_probs(logits, info.temperature)[:, 1]
    detector = OODDetector.from_info(info)
    flags = detector.score(features, logits) > detector.threshold if detector else None
    pred = p >= info.threshold
    return {"accuracy": float((pred == labels).mean()), "sensitivity": float(pred[labels == 1].mean()),
            "specificity": float(1 - pred[labels == 0].mean()), "roc_auc": float(roc_auc_score(labels, p)),
            "ood_flagged": None if flags is None else float(flags.mean()), "flags": flags,
            "images_per_s_b32": round(per_s, 1), "single_latency_ms": median_ms(lambda: backend.outputs(images[:1])),
            "size_bytes": size_bytes}


def onnx_backend(path: Path):
    return load_onnx(path, batch_size=32)[0]  # as the Predictor runs it (the quantiser keeps the metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder (model.pt and manifest.csv)")
    ap.add_argument("--calibration", type=int, default=256, help="validation images for the activation ranges")
    ap.add_argument("--stem", default="quantize", help="results file name, without suffix")
    args = ap.parse_args()
    ckpt = resolve_checkpoint(args.run)[0]
    _, info = load_checkpoint(ckpt)
    data = checkpoint_data(ckpt, info, quiet=True)
    test, labels = np.asarray(data.images("test")), data.labels["test"]
    calib = np.asarray(data.images("val"))[np.random.default_rng(0).permutation(len(data.labels["val"]))
                                           [:args.calibration]]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.run, Path(tmp) / "fp32.onnx").path
        int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib)
        rows = {name: measure(onnx_backend(path), path.stat().st_size, test, labels, info)
                for name, path in [("float32", fp32), ("int8 (static QDQ)", int8)]}
    rows["bf16 (compiled)"] = measure(Predictor.from_checkpoint(ckpt, compile=True).backend, ckpt.stat().st_size,
                                      test, labels, info)
    base_flags = rows["float32"]["flags"]
    for r in rows.values():  # the OOD flag's agreement with float32, image by image (None: no detector)
        flags = r.pop("flags")
        r["ood_flags_agree"] = None if flags is None else float((flags == base_flags).mean())
    change = {name: {k: round(rows[name][k] - rows["float32"][k], 4)
                     for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ood_flagged")
                     if rows[name][k] is not None} for name in list(rows)[1:]}
    result = {"run": str(args.run), "arch": info.arch, "image_size": info.image_size, "tta": info.tta,
              "n_test": len(labels),
              "calibration_images": len(calib), "rows": rows, "minus_float32": change}
    cols = ["accuracy", "sensitivity", "specificity", "roc_auc", "ood_flagged", "ood_flags_agree", "images_per_s_b32",
            "single_latency_ms", "size_bytes"]
    lines = [f"# Reduced-precision inference of `{args.run.name}` ({info.arch}, {info.image_size} px, "
             f"TTA {info.tta})", "",
             f"int8: ONNX Runtime static quantisation, activations calibrated on {len(calib)} validation images; "
             "bf16: the checkpoint compiled by TorchInductor (`--compile`; size is the checkpoint's). "
             f"Test split ({len(labels)} images) at the stored threshold {info.threshold:.3f}.", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {name} | " + " | ".join("n/a" if r[c] is None else str(round(r[c], 4)) for c in cols) + " |"
              for name, r in rows.items()]
    lines += [""] + [f"{name} - float32: " + ", ".join(f"{k} {v:+.4f}" for k, v in diff.items()) + "  "
                     for name, diff in change.items()]
    lines += ["", "Reproduce: `PYTHONPATH=src python benchmarks/quantize.py " + " ".join(sys.argv[1:]) + "`"]
    (HERE / "results" / f"{args.stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
