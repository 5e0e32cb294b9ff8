"""Edit operations: parsing ``OP`` strings and what each operation does to the latent.

====================  ===========================================================================
``OP``                effect inside the mask (normalised intensity units, see below)
====================  ===========================================================================
``shift:DELTA``       clean image ``+ DELTA``: the latent's signal part is shifted, its noise part kept
``scale:FACTOR``      clean image ``* FACTOR``: the latent's signal part is scaled
``inpaint``           regenerate as healthy tissue: the region restarts (from the voided image, or
                      seeded noise with ``start="noise"``) and the
                      network is conditioned on the inpainting corruption (mask descriptor + the
                      image with the region zeroed), as in training (`medinvert.operators.descriptor`)
``transplant:PATH``   the latent of another co-registered volume (same shape) replaces the region's
====================  ===========================================================================

Latent edits in ``xbar`` coordinates.  Along a trajectory ``xbar_sigma = x0 + sigma * eps`` (DDIM-ODE
coordinates, `medinvert.schedule`), so a change ``d = edit(x0) - x0`` of the clean image is a change
``d`` of ``xbar`` at every level -- for ``shift`` ``d = DELTA``, for ``scale`` ``d = (FACTOR - 1) x0``
with ``x0`` the (known) input.  The edit enters at the grid level closest to diffusion time
``t_edit`` and the masked region is regenerated from there, so the network re-harmonises it with
its held surroundings.  Intensities are normalised as `medinvert.invert` does (divided by the
power-of-two robust scale of the volume, `medinvert.intensity`): ``DELTA`` is in those units
(about 1 = a bright foreground voxel) and the output is mapped back to the input's units.

No-ops: ``shift:0`` and ``scale:1`` leave the latent untouched, so the output is the input, bit for bit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from medinvert.errors import MedinvertError

__all__ = ["OP_KINDS", "DEFAULT_T_EDIT", "EditOp", "parse_op"]

#: operation kinds, in documentation order
OP_KINDS: tuple[str, ...] = ("shift", "scale", "inpaint", "transplant")

#: default diffusion time at which each operation enters the trajectory (``t_edit=None``):
#: intensity edits keep the structure (they start part-way), inpainting and transplants regenerate
#: the region from the top of the schedule
DEFAULT_T_EDIT: dict[str, float] = {"shift": 0.3, "scale": 0.3, "inpaint": 1.0, "transplant": 1.0}


@dataclass(frozen=True)
class EditOp:
    """A parsed operation.

    Attributes:
        kind: one of `OP_KINDS`.
        value: ``DELTA`` (shift) or ``FACTOR`` (scale); None otherwise.
        path: the other volume (transplant); None otherwise.
    """

    kind: str
    value: float | None = None
    path: Path | None = None

    @property
    def text(self) -> str:
        """The canonical ``OP`` string (``shift:0.2``, ``inpaint``, ``transplant:/abs/path``)."""
        if self.kind in ("shift", "scale"):
            return f"{self.kind}:{self.value:g}"
        if self.kind == "transplant":
            return f"transplant:{self.path}"
        return self.kind

    @property
    def is_noop(self) -> bool:
        """True for ``shift:0`` and ``scale:1`` (the latent is left as it is)."""
        return (self.kind == "shift" and self.value == 0.0) or (self.kind == "scale" and self.value == 1.0)

    @property
    def default_t_edit(self) -> float:
        """`DEFAULT_T_EDIT` of this kind."""
        return DEFAULT_T_EDIT[self.kind]


def _number(kind: str, raw: str, text: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise MedinvertError(f"edit op {text!r}: {kind} needs a number ({kind}:VALUE)") from None
    if not math.isfinite(value):
        raise MedinvertError(f"edit op {text!r}: the {kind} value must be finite")
    return value


def parse_op(op: str | EditOp) -> EditOp:
    """``"shift:0.2"``, ``"scale:1.5"``, ``"inpaint"`` or ``"transplant:OTHER.nii.gz"`` -> `EditOp`.

    An `EditOp` is returned as is.  Raises `MedinvertError` for an unknown kind, a missing or
    non-finite value, or a transplant source that does not exist (named in the message).
    """
    if isinstance(op, EditOp):
        return op
    if not isinstance(op, str):
        raise MedinvertError(f"edit op must be a string such as 'shift:0.2', got {type(op).__name__}")
    text = op.strip()
    kind, sep, raw = text.partition(":")
    kind = kind.strip().lower()
    if kind not in OP_KINDS:
        raise MedinvertError(f"unknown edit op {text!r}; valid: shift:DELTA, scale:FACTOR, inpaint, transplant:PATH")
    if kind == "inpaint":
        if sep and raw.strip():
            raise MedinvertError(f"edit op {text!r}: inpaint takes no value")
        return EditOp("inpaint")
    if not sep or not raw.strip():
        what = {"shift": "DELTA", "scale": "FACTOR", "transplant": "PATH"}[kind]
        raise MedinvertError(f"edit op {text!r}: {kind} needs a value ({kind}:{what})")
    if kind == "transplant":
        path = Path(os.path.expanduser(raw.strip()))
        if not path.exists():
            raise MedinvertError("transplant source not found", path=path)
        return EditOp("transplant", path=path)
    return EditOp(kind, value=_number(kind, raw.strip(), text))
