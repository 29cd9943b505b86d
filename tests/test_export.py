import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from medcls.cli import main
from medcls.inference.export import ExportError, export_onnx
from medcls.inference.onnx_backend import METADATA_KEY, load_onnx
from medcls.inference.predictor import Predictor
from medcls.models.checkpoint import CheckpointError, load_checkpoint
from medcls.models.inference import batch_logits
from medcls.ood.detector import OODFeatures


def _test_images(xray_root, n=6):
    return sorted((xray_root / "test" / "NORMAL").glob("*.jpeg"))[:n] + \
        sorted((xray_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:n]


def test_onnx_file_is_self_contained(trained_run, trained_onnx):
    model = onnx.load(str(trained_onnx))
    assert model.opset_import[0].version >= 18
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    _, info = load_checkpoint(trained_run)
    assert meta["info"]["classes"] == ["NORMAL", "PNEUMONIA"]
    _, onnx_info = load_onnx(trained_onnx)
    # threshold, temperature, size, colour mode, normalisation, ... (the OOD state's tensors become lists)
    assert dataclasses.replace(onnx_info, ood=None) == dataclasses.replace(info, ood=None)
    assert onnx_info.ood.threshold == info.ood.threshold and onnx_info.ood.blocks == info.ood.blocks
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # dynamic batch


def test_onnx_outputs_equal_pytorch_on_real_images(trained_run, trained_onnx, xray_root):
    torch_predictor, onnx_predictor = Predictor.load(trained_run), Predictor.load(trained_onnx)
    assert (torch_predictor.backend.name, onnx_predictor.backend.name) == ("pytorch", "onnxruntime")
    files = _test_images(xray_root)
    images = np.stack([torch_predictor.preprocess(f) for f in files])
    backend, _ = load_onnx(trained_onnx, batch_size=5)  # batches of 5, 5 and 2: the batch axis is dynamic
    logits, features = backend.outputs(images)
    net = torch_predictor.net
    ood_net = OODFeatures(net, images.shape[1], images.shape[3])
    with torch.inference_mode():
        want_logits, want_features = ood_net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert np.abs(logits - batch_logits(net, images)).max() < 1e-4
    assert np.abs(logits - want_logits.numpy()).max() < 1e-4
    # the OOD detector's features: channel means at each scale, then the 64 penultimate activations
    assert features.shape == (len(files), sum(ood_net.blocks)) and ood_net.blocks[-1] == 64
    assert np.abs(features - want_features.numpy()).max() < 1e-3
    rows_torch, _ = torch_predictor.predict(files)
    rows_onnx, _ = onnx_predictor.predict(files)
    assert [r.prediction for r in rows_onnx] == [r.prediction for r in rows_torch]
    assert onnx_predictor.ood is not None and all(r.ood_score is not None for r in rows_onnx)
    for a, b in zip(rows_onnx, rows_torch):
        assert a.path == b.path and a.probabilities["PNEUMONIA"] == pytest.approx(b.probabilities["PNEUMONIA"], abs=1e-5)
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-3)
        assert a.in_distribution == b.in_distribution
    single, _ = onnx_predictor.predict([files[0]])
    assert single[0] == rows_onnx[0]


def test_export_and_predict_commands(trained_run, xray_root, tmp_path, capsys):
    out = tmp_path / "exported.onnx"
    assert main(["export", str(trained_run / "model.pt"), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"exported {out}" in printed and "max |ONNX - PyTorch|" in printed
    diff = float(printed.split("logits ")[1].split(",")[0])
    assert 0 <= diff < 1e-4
    target = tmp_path / "pred.csv"
    assert main(["predict", str(xray_root / "test" / "NORMAL" / "IM-0001-0001.jpeg"), "-m", str(out),
                 "-o", str(target)]) == 0
    assert target.read_text().splitlines()[0] == "path,prediction,p_NORMAL,p_PNEUMONIA,ood_score,in_distribution"


def test_unfaithful_export_fails_and_leaves_no_file(trained_run, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(ExportError, match="logits differ from PyTorch"):
        export_onnx(trained_run, out, tolerance=-1.0)  # no difference can pass a negative tolerance
    assert list(tmp_path.iterdir()) == []


def test_foreign_onnx_files_are_refused(tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 definitely not protobuf" * 10)
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        Predictor.load(garbage)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(plain))
    assert main(["predict", str(garbage), "-m", str(plain)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"medcls predict: error: {plain} is an ONNX model without medcls metadata (make it with `medcls export`)"]
