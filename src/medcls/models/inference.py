"""Batched forward passes over uint8 image arrays (no augmentation, no gradients)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medcls.core.progress import batch_starts
from medcls.data.prepared import to_model_input

# Test-time augmentation views: (zoom, shift x, shift y); no flips (anatomy is not symmetric).
TTA_VIEWS = [(1.0, 0.0, 0.0), (0.94, 0.0, 0.0), (1.06, 0.0, 0.0), (1.0, 0.04, 0.0), (1.0, -0.04, 0.0)]


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic zoomed and shifted copies of a batch ``(N, C, H, W)``."""
    views = []
    for zoom, tx, ty in TTA_VIEWS:
        if (zoom, tx, ty) == (1.0, 0.0, 0.0):
            views.append(x)
            continue
        theta = torch.tensor([[1 / zoom, 0, 2 * tx], [0, 1 / zoom, 2 * ty]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        views.append(F.grid_sample(x, grid, padding_mode="zeros", align_corners=False))
    return views


@torch.inference_mode()
def batch_logits(net: torch.nn.Module, images: np.ndarray, batch_size: int = 64,
                 channels_last: bool = False, tta: bool = False) -> np.ndarray:
    """Logits ``(N, outputs)`` for uint8 images ``(N, H, W, C)``; ``net`` is put in eval mode.
    With ``tta`` the logits are averaged over :data:`TTA_VIEWS`."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in batch_starts(len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = to_model_input(chunk, channels_last)
        views = tta_views(x) if tta else [x]
        out.append(torch.stack([net(v).float() for v in views]).mean(0).cpu())
    if not out:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(out).numpy()


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``(N, K)``: sigmoid for one logit (two classes), softmax otherwise."""
    z = logits.astype(np.float64) / temperature
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def head_layer(net: torch.nn.Module) -> torch.nn.Linear:
    """The final linear layer (the classifier head) of a network."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("network has no linear classifier head")
    return linears[-1]


class WithFeatures(torch.nn.Module):
    """Wraps a classifier to return ``(logits, features)``, where features are the
    penultimate activations (the input of the final linear layer). Used for
    out-of-distribution scores and exported as a second ONNX output.

    The tap is a forward hook on ``net``'s head, there while the wrapper is open:
    :meth:`remove_taps` (or leaving a ``with`` block) hands ``net`` back untouched."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self._head = head_layer(net)
        self._features: torch.Tensor | None = None
        self._handles = [self._head.register_forward_pre_hook(self._keep)]

    def _keep(self, module, inputs):
        self._features = inputs[0]

    def remove_taps(self) -> None:
        """Remove every hook this wrapper put on ``net`` (the wrapper cannot run after)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "WithFeatures":
        return self

    def __exit__(self, *exc) -> None:
        self.remove_taps()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        features = self._features.flatten(1)
        self._features = None
        return logits, features
