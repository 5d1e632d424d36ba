"""Checkpoints written atomically and read back with ``torch.load(weights_only=True)``.

A payload holds only types the restricted unpickler accepts: state dicts, tensors, numbers,
strings and plain lists/dicts (the config and history as dicts, never dataclasses).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.registry import build_model


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe (weights-only) unpickler."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def load_model_from_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The network a checkpoint was trained as, with its weights loaded, in eval mode."""
    payload = load_checkpoint(path, map_location=map_location)
    model = build_model(payload["block"], num_classes=int(payload["num_classes"]))
    model.load_state_dict(payload["model"])
    return model.eval()
