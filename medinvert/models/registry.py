"""Shipped models by name: ``medinvert.load_model("t1")`` or a path to a checkpoint file.

Shipped checkpoints live in ``medinvert/models/weights/<name>.pt`` (one per BraTS modality) and
are installed with the wheel as package data.  BraTS 2023 modality names are accepted as aliases
(``t1n`` -> ``t1``, ``t1c`` -> ``t1ce``, ``t2w`` -> ``t2``, ``t2f`` -> ``flair``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medinvert.errors import MedinvertError

__all__ = ["MODEL_NAMES", "ALIASES", "WEIGHTS_DIR", "available_models", "resolve_model", "load_model"]

#: canonical names of the shipped per-modality models
MODEL_NAMES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: BraTS 2023 modality names -> canonical names
ALIASES: dict[str, str] = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
#: folder of the shipped checkpoints
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def available_models() -> dict[str, Path]:
    """Canonical name -> checkpoint path, for the shipped models that are installed."""
    return {name: WEIGHTS_DIR / f"{name}.pt" for name in MODEL_NAMES if (WEIGHTS_DIR / f"{name}.pt").is_file()}


def _available_text() -> str:
    names = sorted(available_models())
    return ", ".join(names) if names else "none installed"


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Path of the checkpoint meant by a model name (or alias) or a file path.

    Raises `MedinvertError` listing the available names when it resolves to nothing.
    """
    text = os.fspath(name_or_path)
    key = ALIASES.get(text.lower(), text.lower())
    if key in MODEL_NAMES:
        path = WEIGHTS_DIR / f"{key}.pt"
        if not path.is_file():
            raise MedinvertError(f"shipped model {key!r} is not installed (expected {path}); "
                                 f"available: {_available_text()}")
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise MedinvertError(f"no model named {text!r} and no such checkpoint file; available names: "
                         f"{_available_text()} (known: {', '.join(MODEL_NAMES)}), or pass a path to a .pt file")


def load_model(name_or_path: str | os.PathLike[str], *, use_ema: bool = True) -> tuple[Any, dict[str, Any]]:
    """Load a shipped model by name (``t1``, ``t1ce``, ``t2``, ``flair``) or a checkpoint path.

    Returns ``(model, config)`` as `medinvert.models.checkpoint.load_checkpoint` does: the
    `LipschitzUNet` in eval mode and its JSON config (architecture, schedule, normalisation ...).
    """
    from medinvert.models.checkpoint import load_checkpoint

    return load_checkpoint(resolve_model(name_or_path), use_ema=use_ema)
