"""Temperature scaling (Guo et al., 2017), fitted on validation logits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under logits / temperature."""
    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    # cross_entropy refuses int32 targets; fit_temperature calls this with the caller's labels
    y = torch.as_tensor(labels, dtype=torch.int64)
    if z.shape[1] == 1:
        return float(F.binary_cross_entropy_with_logits(z[:, 0], y.double()))
    return float(F.cross_entropy(z, y))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising validation NLL of ``logits / T``."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)  # cross_entropy wants int64 targets
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scaled = z / log_t.exp()
        if z.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(scaled[:, 0], y.double())
        else:
            loss = F.cross_entropy(scaled, y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # Never worse than no scaling on the data it was fitted to.
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence (``probs``: ``(N, K)``)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)
