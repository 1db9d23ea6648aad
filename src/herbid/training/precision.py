"""Mixed precision modes: which autocast dtype, and whether gradients need scaling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from herbid.errors import InvalidOption


@dataclass(frozen=True)
class AmpMode:
    dtype: torch.dtype | None
    #: fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    grad_scaler: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")


AMP_MODES: dict[str, AmpMode] = {
    "none": AmpMode(None),
    "bf16": AmpMode(torch.bfloat16),
    "fp16": AmpMode(torch.float16, grad_scaler=True, devices=("cuda",)),
}


def amp_mode(name: str, device: torch.device) -> AmpMode:
    try:
        mode = AMP_MODES[name]
    except KeyError:
        raise InvalidOption(f"unknown amp mode {name!r}; known: {', '.join(sorted(AMP_MODES))}") from None
    if mode.dtype is not None and device.type not in mode.devices:
        raise InvalidOption(f"amp={name} is not supported on {device.type}; use one of "
                         f"{', '.join(n for n, m in AMP_MODES.items() if device.type in m.devices or m.dtype is None)}")
    return mode


@contextlib.contextmanager
def autocast(name: str, device: torch.device) -> Iterator[None]:
    """Autocast for ``name`` on ``device`` (a no-op for ``none``)."""
    mode = amp_mode(name, device)
    if mode.dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=mode.dtype):
        yield


def grad_scaler(name: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for modes that need one."""
    return torch.amp.GradScaler(device.type, enabled=amp_mode(name, device).grad_scaler)
