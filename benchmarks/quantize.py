"""int8 quantisation of an exported model: ONNX Runtime static quantisation (QDQ,
per-channel weights, activations calibrated on validation images), against the
float32 export of the same checkpoint, on the run's test split: accuracy,
sensitivity, specificity and ROC AUC at the stored threshold, batch-32 images/s and
single-image latency. Writes ``benchmarks/results/quantize.{json,md}``.

    PYTHONPATH=src python benchmarks/quantize.py runs/shipped
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import roc_auc_score

from common import median_ms

from medcls.checkpoint import load_checkpoint
from medcls.evaluation.evaluate import checkpoint_data, resolve_checkpoint
from medcls.export import export_onnx
from medcls.models.inference import logits_to_probs
from medcls.onnx_model import INPUT_NAME, load_onnx

HERE = Path(__file__).resolve().parent


class Calibration(CalibrationDataReader):
    """Validation images, one batch of 8 at a time (the test split is not looked at)."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{INPUT_NAME: np.ascontiguousarray(images[i:i + 8])} for i in range(0, len(images), 8)])

    def get_next(self):
        return next(self.batches, None)


def measure(path: Path, images: np.ndarray, labels: np.ndarray, info) -> dict:
    backend, _ = load_onnx(path, batch_size=32)  # as the Predictor runs it (the quantiser keeps the metadata)
    backend.outputs(images[:32])  # warm-up
    start = time.perf_counter()
    logits = backend.logits(images)
    per_s = len(images) / (time.perf_counter() - start)
    p = logits_to_probs(logits, info.temperature)[:, 1]
    pred = p >= info.threshold
    return {"accuracy": float((pred == labels).mean()), "sensitivity": float(pred[labels == 1].mean()),
            "specificity": float(1 - pred[labels == 0].mean()), "roc_auc": float(roc_auc_score(labels, p)),
            "images_per_s_b32": round(per_s, 1), "single_latency_ms": median_ms(lambda: backend.outputs(images[:1])),
            "size_bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run folder (model.pt and manifest.csv)")
    ap.add_argument("--calibration", type=int, default=256, help="validation images for the activation ranges")
    args = ap.parse_args()
    ckpt = resolve_checkpoint(args.run)[0]
    _, info = load_checkpoint(ckpt)
    data = checkpoint_data(ckpt, info, quiet=True)
    test, labels = np.asarray(data.images("test")), data.labels["test"]
    calib = np.asarray(data.images("val"))[np.random.default_rng(0).permutation(len(data.labels["val"]))
                                           [:args.calibration]]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.run, Path(tmp) / "fp32.onnx").path
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph fusions, as ORT advises
        quantize_static(str(prepared), str(int8), Calibration(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        rows = {"float32": measure(fp32, test, labels, info), "int8 (static QDQ)": measure(int8, test, labels, info)}
    change = {k: round(rows["int8 (static QDQ)"][k] - rows["float32"][k], 4)
              for k in ("accuracy", "sensitivity", "specificity", "roc_auc")}
    result = {"run": str(args.run), "arch": info.arch, "image_size": info.image_size, "tta": info.tta,
              "n_test": len(labels),
              "calibration_images": len(calib), "rows": rows, "int8_minus_float32": change}
    cols = ["accuracy", "sensitivity", "specificity", "roc_auc", "images_per_s_b32", "single_latency_ms", "size_bytes"]
    lines = [f"# int8 quantisation of `{args.run.name}` ({info.arch}, {info.image_size} px, TTA {info.tta})", "",
             f"ONNX Runtime static quantisation, activations calibrated on {len(calib)} validation images; "
             f"test split ({len(labels)} images) at the stored threshold {info.threshold:.3f}.", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(str(round(r[c], 4)) for c in cols) + " |" for name, r in rows.items()]
    lines += ["", "int8 - float32: " + ", ".join(f"{k} {v:+.4f}" for k, v in change.items()),
              "", f"Reproduce: `PYTHONPATH=src python benchmarks/quantize.py {args.run}`"]
    (HERE / "results" / "quantize.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / "quantize.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
