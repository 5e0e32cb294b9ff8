"""medinvert: reconstruct corrupted MRI volumes with an exactly invertible conditional diffusion model.

The public surface is small and imported lazily (so `import medinvert` and the CLI start fast):

    load_volume, save_volume, find_cases        -- medinvert.io
    corrupt                                     -- medinvert.transforms
    psnr, ssim, nmse                            -- medinvert.metrics
    reconstruct_volume, ReconstructionResult    -- medinvert.reconstruct
    load_model                                  -- medinvert.models.registry
    invert, generate, Latent                    -- medinvert.inversion, medinvert.latent
    edit, EditResult                            -- medinvert.editing
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "MedinvertError": "medinvert.errors",
    "load_volume": "medinvert.io",
    "save_volume": "medinvert.io",
    "find_cases": "medinvert.io",
    "corrupt": "medinvert.transforms",
    "Observation": "medinvert.operators",
    "psnr": "medinvert.metrics",
    "ssim": "medinvert.metrics",
    "nmse": "medinvert.metrics",
    "load_model": "medinvert.models.registry",
    "invert": "medinvert.inversion",
    "generate": "medinvert.inversion",
    "Latent": "medinvert.latent",
    "edit": "medinvert.editing",
    "EditResult": "medinvert.editing",
    "reconstruct_volume": "medinvert.reconstruct",
    "ReconstructionResult": "medinvert.reconstruct",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medinvert' has no attribute {name!r}")
