"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

Fitted on the validation split only (never on test), by minimising the negative
log-likelihood over log T (so T stays positive) with L-BFGS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 100) -> float:
    """The NLL-minimising temperature for ``logits`` (1.0 if there is nothing to fit)."""
    if logits.numel() == 0 or targets.numel() == 0:
        return 1.0
    logits = logits.detach().double().cpu()
    targets = targets.detach().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature if math.isfinite(temperature) and temperature > 0 else 1.0
