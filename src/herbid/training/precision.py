"""Gradient scaling for mixed-precision training (the autocast modes are in
:mod:`herbid.inference.device`, shared with inference)."""

from __future__ import annotations

import torch

from herbid.inference.device import amp_mode


def grad_scaler(name: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for modes that need one."""
    return torch.amp.GradScaler(device.type, enabled=amp_mode(name, device).grad_scaler)
