"""Turn a training checkpoint into a shipped inference checkpoint.

`export_for_inference(src, dst)`: takes the EMA weights, re-runs the spectral-norm power iteration on
them (the stored vectors belong to the live weights, not their average), bakes the spectral-norm parametrizations into
plain weights (`freeze_spectral_norm`: the same forward pass, faster, no power-iteration state),
drops the optimizer state, and records in the config the model's Lipschitz numbers

    lipschitz.bound      analytic upper bound of Lip(x -> f_theta(x, t, c)) valid for every t and c
    lipschitz.empirical  power-iteration estimate on a 64x64 probe (a lower bound of the true constant)
    lipschitz.parameters number of parameters

so `medinvert models` can list them without recomputing, and the model's training ``lineage``: the
run that produced ``src`` and, following each run's ``--init`` checkpoint while it is on disk, the runs
before it (steps, data, crop, batch, seconds, final loss each), so the card states the total
training, not only the last fine-tune.  The output is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medinvert.models.checkpoint import load_checkpoint, save_checkpoint
from medinvert.models.layers import freeze_spectral_norm, refresh_spectral_vectors
from medinvert.models.lipschitz import lipschitz_empirical, lipschitz_upper_bound

__all__ = ["export_for_inference", "lipschitz_summary", "training_lineage"]

#: what a lineage entry keeps of a run's ``training`` config
LINEAGE_KEYS: tuple[str, ...] = ("modality", "dim", "crop", "extra_crops", "batch_size", "lr", "seed", "prediction",
                                 "completed_steps", "seconds", "final_loss", "world_size", "init")


def lipschitz_summary(model: torch.nn.Module, *, probe: int = 64, seed: int = 0) -> dict[str, Any]:
    """Analytic bound (any t, c) and empirical estimate (null condition, t = 0.5) of the network."""
    torch.manual_seed(seed)
    in_channels = int(getattr(model, "in_channels", 1))
    depth = (8,) if getattr(model, "spatial_dims", 2) == 3 else ()  # 3D networks: a 64x64x8 probe
    return {
        "bound": float(lipschitz_upper_bound(model)),
        "empirical": float(lipschitz_empirical(model, (1, in_channels, probe, probe, *depth), t=0.5, n_iter=20)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "of": "x -> network output (v or eps) at fixed t, c; Euclidean norm per slice",
    }


def training_lineage(src: str | os.PathLike[str], max_depth: int = 16) -> list[dict[str, Any]]:
    """The runs behind checkpoint ``src``, latest first: its own ``training`` record, then that of its
    ``init`` checkpoint, and so on while the file exists and reads as a checkpoint (paths relative to
    the working directory, as the runs recorded them).  A run resumed from its own output counts once;
    a chain that loops back stops there."""
    from medinvert.errors import MedinvertError
    from medinvert.models.checkpoint import read_checkpoint

    lineage: list[dict[str, Any]] = []
    seen: set[Path] = set()
    path: Path | None = Path(src)
    while path is not None and path.is_file() and path.resolve() not in seen and len(lineage) < max_depth:
        seen.add(path.resolve())
        try:
            training = read_checkpoint(path)["config"].get("training", {})
        except MedinvertError:  # an init that is gone bad: the lineage ends here
            break
        lineage.append({"checkpoint": path.name, **{k: training.get(k) for k in LINEAGE_KEYS}})
        path = Path(training["init"]) if training.get("init") else None
    return lineage


def export_for_inference(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write the EMA, spectral-norm-frozen, optimizer-free version of ``src`` to ``dst``."""
    model, config = load_checkpoint(src, use_ema=True)
    refresh_spectral_vectors(model)  # EMA averages weights only; re-converge the power iteration to them
    freeze_spectral_norm(model)
    config = {k: v for k, v in config.items() if k not in ("architecture", "format_version", "medinvert_version")}
    config["lipschitz"] = lipschitz_summary(model)
    config["exported_from"] = Path(src).name
    config["lineage"] = training_lineage(src)
    return save_checkpoint(dst, model, config, step=int(config.get("step", 0)))
