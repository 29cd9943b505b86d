"""Grad-CAM and Grad-CAM++ heat maps (the ``grad-cam`` package underneath) for any
registered architecture, single-logit binary and multi-class models alike, and
their overlays on the original image at its own size.

The target layer is found automatically: the module that outputs the network's
last spatial feature map (the last convolutional stage, before the map is pooled
away); any module can be named instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputTarget,
)
from torch import nn

from medcls.core.io import atomic_path
from medcls.data.images import Source, load_image, load_thumbnail
from medcls.data.prepared import to_model_input
from medcls.explain import DEFAULT_METHOD, METHOD_LABELS, METHOD_NAMES
from medcls.explain.picture import annotate
from medcls.inference.predictor import Predictor, decide

METHODS = dict(zip(METHOD_NAMES, (GradCAM, GradCAMPlusPlus)))
_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class ExplainError(ValueError):
    """A heat map cannot be made as asked (unknown method or layer, no convolution)."""


def last_feature_map_layer(net: nn.Module, in_channels: int, image_size: int) -> str:
    """Name of the module producing the last spatial feature map of ``net``.

    A probe forward pass records every module's output in completion order; the
    answer is the last one that is a 4-D map larger than 1x1 and not the output of
    a pooling layer (so an enclosing block is preferred to its last leaf, and the
    map before a final max-pool is preferred to the pooled one)."""
    if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
        raise ExplainError(f"{type(net).__name__} has no convolution to explain")
    seen: list[tuple[str, torch.Tensor]] = []
    pooled: set[int] = set()

    def record(name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                seen.append((name, output))  # keeping the tensor keeps its id unique
                if isinstance(module, _POOLING):
                    pooled.add(id(output))
        return hook

    handles = [m.register_forward_hook(record(name, m)) for name, m in net.named_modules() if name]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_channels, image_size, image_size,
                                   device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    maps = [(name, out) for name, out in seen if out.ndim == 4 and id(out) not in pooled]
    spatial = [name for name, out in maps if out.shape[-1] * out.shape[-2] > 1]
    if spatial:
        return spatial[-1]
    if maps:  # every map is 1x1 at this input size: the heat map will be flat, but well defined
        return maps[-1][0]
    raise ExplainError(f"{type(net).__name__} produces no 4-D feature map")


def _module(net: nn.Module, name: str) -> nn.Module:
    try:
        return net.get_submodule(name)
    except AttributeError:
        convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        raise ExplainError(f"no layer named '{name}' in the model (its last convolutions: "
                           f"{', '.join(convs[-3:])})") from None


def resize_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """A heat map resized (bilinear) to ``width`` x ``height``, kept in [0, 1]."""
    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The heat map in the JET colour map over ``image`` (uint8, HxWxC), as uint8 RGB of the image's size."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    cam = resize_map(cam, rgb.shape[1], rgb.shape[0])
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=image_weight)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


@dataclass
class Explanation:
    """One image explained: the original (RGB, own size), the heat map at that size,
    and the class it explains with that class's probability."""
    name: str
    image: np.ndarray
    cam: np.ndarray
    class_index: int
    class_name: str
    probability: float

    def overlay(self) -> np.ndarray:
        return overlay(self.image, self.cam)

    def save(self, path: str | Path) -> Path:
        """The bare overlay, at the image's size."""
        return save_png(self.overlay(), path)

    def save_labelled(self, path: str | Path, method: str) -> Path:
        """The overlay with a colour bar and a caption naming the method, the class and its probability."""
        caption = f"{METHOD_LABELS[method]}: {self.class_name}, p = {self.probability:.3f}"
        return save_png(annotate(self.overlay(), caption), path)


class Explainer:
    """Grad-CAM (or Grad-CAM++) heat maps for a :class:`~medcls.inference.predictor.Predictor`'s model."""

    def __init__(self, predictor: Predictor, method: str = DEFAULT_METHOD, layer: str | None = None,
                 batch_size: int = 16):
        if method not in METHODS:
            raise ExplainError(f"unknown explanation method '{method}' (available: {', '.join(METHODS)})")
        self.predictor, self.method, self.batch_size = predictor, method, batch_size
        info = predictor.info
        self.layer = layer or last_feature_map_layer(predictor.net, info.in_channels, info.image_size)
        self._target = _module(predictor.net, self.layer)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, **kwargs) -> "Explainer":
        """An explainer for checkpoint ``path`` (None: the shipped model)."""
        return cls(Predictor.from_checkpoint(explainable_model(path)), **kwargs)

    def _targets(self, classes: Sequence[int]) -> list:
        # One logit: explain the predicted side (the logit for the positive class, its
        # negation for the negative class); K logits: the class's own logit.
        if self.predictor.info.binary:
            return [BinaryClassifierOutputTarget(int(k)) for k in classes]
        return [ClassifierOutputTarget(int(k)) for k in classes]

    def maps(self, images: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
        """Heat maps ``(N, H, W)`` in [0, 1] at the model's input size for preprocessed
        uint8 images ``(N, H, W, C)``; ``classes`` default to the predicted ones."""
        if classes is None:
            classes = decide(self.predictor.predict_arrays(images), self.predictor.info)
        net = self.predictor.net
        cam = METHODS[self.method](model=net, target_layers=[self._target])
        out = []
        try:
            with torch.enable_grad():
                for start in range(0, len(images), self.batch_size):
                    chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
                    x = to_model_input(chunk).to(cam.device)
                    out.append(cam(x, self._targets(classes[start:start + self.batch_size])))
        finally:
            cam.activations_and_grads.release()
            net.zero_grad(set_to_none=True)
        size = self.predictor.info.image_size
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, size, size), np.float32)

    def explain(self, sources: Sequence[Source], names: Sequence[str] | None = None,
                classes: Sequence[int] | None = None, max_side: int | None = None) -> list[Explanation]:
        """Explain images (their predicted classes unless ``classes`` are given), in one
        batch; each heat map is resized to its original image's own size (``max_side``: to the
        image shrunk to at most that many px on its longer side, e.g. for a web page)."""
        if not sources:
            return []
        names = list(names) if names is not None else [str(s) for s in sources]
        model_input = np.stack([self.predictor.preprocess(s) for s in sources])
        probs = self.predictor.predict_arrays(model_input)
        classes = decide(probs, self.predictor.info) if classes is None else np.asarray(classes, dtype=int)
        cams = self.maps(model_input, classes)
        out = []
        for source, name, cam, k, p in zip(sources, names, cams, classes, probs):
            original = load_image(source, "rgb") if max_side is None else load_thumbnail(source, "rgb", max_side)
            out.append(Explanation(name, original, resize_map(cam, original.shape[1], original.shape[0]),
                                   int(k), self.predictor.classes[k], float(p[k])))
        return out


def explainable_model(model: str | Path | None) -> Path:
    """The checkpoint to explain: ``model`` (None: the default shipped one; a shipped model's name);
    heat maps need the network's gradients, which an exported ONNX file does not give."""
    from medcls.assets import resolve_model

    path = resolve_model(model)
    if path.suffix.lower() == ".onnx":
        raise ExplainError(f"{model}: heat maps need the .pt checkpoint (or run folder), not the exported ONNX file")
    return path


def overlay_names(paths: Sequence[str | Path], method: str = DEFAULT_METHOD) -> list[str]:
    """``<stem>.<method>.png`` per path (``gradcampp`` for Grad-CAM++), numbered where two inputs share a stem."""
    suffix = f".{method.replace('+', 'p')}.png"
    names, used = [], set()
    for p in paths:
        stem, name, i = Path(p).stem, f"{Path(p).stem}{suffix}", 1
        while name in used:
            name, i = f"{stem}-{i}{suffix}", i + 1
        used.add(name)
        names.append(name)
    return names


def explain_files(paths: Iterable[str | Path], model: str | Path | None, out_dir: str | Path, method: str = DEFAULT_METHOD,
                  layer: str | None = None) -> list[Path]:
    """Write one heat-map PNG per image into ``out_dir`` explaining the predicted class: the overlay at
    the image's size, a colour bar and a caption (method, class, probability); ``model`` None: the shipped one."""
    paths = list(paths)
    explainer = Explainer.from_checkpoint(model, method=method, layer=layer)
    targets = [Path(out_dir) / name for name in overlay_names(paths, method)]
    step = explainer.batch_size  # originals can be large: hold one batch of them at a time
    for start in range(0, len(paths), step):
        for ex, target in zip(explainer.explain(paths[start:start + step]), targets[start:start + step]):
            ex.save_labelled(target, method)
    return targets
