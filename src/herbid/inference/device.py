"""Where and in which precision a model runs: device names and autocast modes.

Shared by training and every consumer of a model, so that ``--device`` and ``--amp``
mean the same in ``train``, ``evaluate``, ``identify``, ``index`` and ``serve``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from herbid.errors import InvalidOption


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU if there is one, else the CPU.

    A device this machine does not have is the user's mistake and says so in one line,
    not as a CUDA traceback later in the first forward pass.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidOption(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOption(f"device {name!r}: CUDA is not available on this machine; use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise InvalidOption(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidOption(f"device {name!r}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InvalidOption(f"device {name!r}: herbid runs on cpu, cuda or mps")
    return device


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
