"""Batched forward passes over uint8 image arrays (no augmentation, no gradients)."""

from __future__ import annotations

import numpy as np
import torch

from medcls.data.prepared import to_model_input


@torch.inference_mode()
def batch_logits(net: torch.nn.Module, images: np.ndarray, batch_size: int = 64,
                 channels_last: bool = False) -> np.ndarray:
    """Logits ``(N, outputs)`` for uint8 images ``(N, H, W, C)``; ``net`` is put in eval mode."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        out.append(net(to_model_input(chunk, channels_last)).float().cpu())
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
