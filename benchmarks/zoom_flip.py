"""Issue #16's field-of-view target, measured as the issue states it: the training folder's NORMAL
images centre-cropped to a share of each side and resized back to their own size, then classified as
``medcls predict`` does (the model's test-time augmentation, its stored threshold); the share called
PNEUMONIA at each crop. The training folder holds the images the model was fitted on and its
validation split: the figure is what the model does to images it knows once only their framing
changes. The test folder is not read.

    PYTHONPATH=src python benchmarks/zoom_flip.py [--model M] [--crops 1 0.9 0.8 0.7] [--limit N]

Writes ``benchmarks/results/zoom_flip.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, write_json  # noqa: E402
from medcls import api  # noqa: E402
from medcls.assets import shipped_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "chest_xray"


def centre_crop(path: Path, share: float, out: Path) -> None:
    """``path`` cropped to ``share`` of each side about its centre, resized back, written as PNG."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        w, h = img.size
        cw, ch = max(1, round(w * share)), max(1, round(h * share))
        left, top = (w - cw) // 2, (h - ch) // 2
        img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC).save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint or run folder (default: the shipped model)")
    ap.add_argument("--data", default=str(DATA), help="the chest_xray folder (train/NORMAL is read)")
    ap.add_argument("--crops", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7])
    ap.add_argument("--limit", type=int, default=0, help="first N images by name (0: all)")
    ap.add_argument("--name", default="shipped", help="key of this model in the results file")
    args = ap.parse_args()

    model = Path(args.model) if args.model else shipped_model()
    files = sorted((Path(args.data) / "train" / "NORMAL").glob("*.jpeg"))
    if args.limit:
        files = files[:args.limit]
    if not files:
        raise SystemExit(f"no NORMAL images in {Path(args.data) / 'train' / 'NORMAL'}")
    rows = {}
    for share in args.crops:
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                centre_crop(f, share, Path(tmp) / f"{f.stem}.png")
            started = time.perf_counter()
            predictions, errors = api.predict([tmp], model)
            seconds = time.perf_counter() - started
        called = sum(p.prediction == "PNEUMONIA" for p in predictions)
        rows[f"{share:g}"] = {"images": len(predictions), "unreadable": len(errors),
                              "called_pneumonia": called, "share_called_pneumonia": called / len(predictions),
                              "predict_seconds": round(seconds, 1)}
        print(f"crop {share:.0%}: {called}/{len(predictions)} called PNEUMONIA ({called / len(predictions):.1%})")
    results = RESULTS / "zoom_flip.json"
    previous = json.loads(results.read_text()) if results.is_file() else {}
    previous[args.name] = {"model": str(model), "images": str(Path(args.data) / "train" / "NORMAL"),
                           "crops": rows, "target": "70% crop: <= 5% called PNEUMONIA (issue #16)",
                           "command": "PYTHONPATH=src python benchmarks/zoom_flip.py " + " ".join(sys.argv[1:]),
                           "machine": machine()}
    write_json(RESULTS, "zoom_flip", previous)


if __name__ == "__main__":
    main()
