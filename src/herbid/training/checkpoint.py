"""Per-epoch checkpoints that make a killed run resumable to the same result.

``RUN/checkpoint.pt`` is replaced atomically after every epoch: model, optimizer,
scheduler and grad-scaler states, the epoch count, the history so far, the best-val
bookkeeping, the config and the RNG states. Every source of randomness inside an epoch
is reseeded from ``(seed, epoch)`` anyway, so resuming at an epoch boundary replays the
remaining epochs exactly; the saved RNG states are restored too, for code that draws
outside the seeded paths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herbid.data.dataset_folder import atomic_path
from herbid.errors import InvalidOption

CHECKPOINT = "checkpoint.pt"
BEST_WEIGHTS = "best.pt"
CHECKPOINT_FORMAT = "herbid-checkpoint/1"


@dataclass
class TrainState:
    """What the loop carries from one epoch to the next."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_top1: float = float("-inf")


def rng_states() -> dict[str, Any]:
    """RNG states as tensors and plain tuples, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
                              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, state: TrainState, config: dict[str, Any]) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        # "model" is the key herbid.models.weights reads, so a checkpoint is also an init.
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_val_top1": state.best_val_top1,
        "config": config,
        "rng": rng_states(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise InvalidOption(f"{path}: not a herbid checkpoint (format {payload.get('format')!r})")
    return payload


def state_from_checkpoint(payload: dict[str, Any]) -> TrainState:
    return TrainState(epoch=int(payload["epoch"]), history=list(payload["history"]),
                      best_epoch=int(payload["best_epoch"]), best_val_top1=float(payload["best_val_top1"]))


def save_weights(path: Path, model: torch.nn.Module) -> Path:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    return path
