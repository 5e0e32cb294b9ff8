"""What every solver shares: the registry entry, sigma-grid checks, callbacks, coordinate helpers.

Conventions (k-diffusion style plain functions, state passed explicitly):

    generate(denoiser, state, sigmas, *, callback=None, **options) -> x0      (clean image tensor)
    invert(denoiser, x0, sigmas, *, callback=None, **options) -> state        (the latent at sigmas[0])

``sigmas`` is a strictly decreasing float64 1-D tensor in *generation* order whose last entry is
exactly 0 (`medinvert.schedule.Schedule.sigmas`); `invert` walks it backwards.  A plain tensor
``state`` is ``xbar`` at ``sigmas[0]`` (``xbar = x0 + sigma n``; fresh noise is
``sigmas[0] * randn``); pair methods also accept the state object their `invert` returns, which
records the rest of its grid (``sigmas``: from the state's level down to 0) so that a mismatched
grid is refused instead of silently breaking the round trip.  At sigma = 0, ``xbar = x`` is the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch

from medinvert.errors import MedinvertError

__all__ = ["EpsModel", "Callback", "SolverSpec", "EXACTNESS", "check_sigmas", "check_grid", "check_state_tensor", "emit", "eps_in_x"]

class EpsModel(Protocol):
    """What solvers drive: ``eps = model(xbar, sigma)`` plus an NFE counter (`medinvert.denoiser.Denoiser`)."""

    nfe: int

    def __call__(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor: ...


#: ``callback(info)`` receives a dict with ``method``, ``direction`` ("generate" | "invert"),
#: ``step`` (0-based, in the direction of travel), ``steps``, ``sigma`` (where the state now is),
#: ``state`` (tensor or state object) and ``nfe`` (the denoiser's counter so far).
Callback = Callable[[dict], None]

#: Classes of exactness: no exact inverse / exact only in exact arithmetic / bit-exact in floating point.
EXACTNESS: tuple[str, ...] = ("none", "exact_arithmetic", "floating_point")


def check_sigmas(sigmas: torch.Tensor | list[float]) -> list[float]:
    """Validate a sampling grid and return it as Python floats (exact copies of the float64 values).

    Raises `MedinvertError` unless it is 1-D, finite, strictly decreasing, has >= 2 entries, starts
    above 0 and ends with exactly 0.
    """
    sig = torch.as_tensor(sigmas)
    if not sig.is_floating_point() or sig.ndim != 1 or sig.numel() < 2:
        raise MedinvertError("sigmas must be a 1-D float tensor with at least two entries (steps + 1)")
    sig = sig.to(torch.float64)
    if not bool(torch.all(torch.isfinite(sig))):
        raise MedinvertError("sigmas must be finite")
    if not bool(torch.all(sig[1:] < sig[:-1])):
        raise MedinvertError("sigmas must be strictly decreasing (generation order)")
    if float(sig[-1]) != 0.0:
        raise MedinvertError(f"sigmas must end with exactly 0.0 (the clean point), got {float(sig[-1])}")
    return [float(v) for v in sig]


def check_state_tensor(state: Any, what: str = "state") -> torch.Tensor:
    """A floating ``(B, C, H, W)`` / ``(B, C, D, H, W)`` tensor, or `MedinvertError`."""
    if not isinstance(state, torch.Tensor) or not state.is_floating_point() or state.ndim not in (4, 5):
        raise MedinvertError(f"{what} must be a floating (B, C, H, W) or (B, C, D, H, W) tensor")
    return state


def emit(callback: Callback | None, **info: Any) -> None:
    """Call ``callback(info)`` if there is one."""
    if callback is not None:
        callback(info)


def eps_in_x(denoiser: EpsModel, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """eps for a state in the original VP coordinates: ``denoiser(x * sqrt(1 + sigma^2), sigma)``."""
    return denoiser(x * math.sqrt(1.0 + sigma * sigma), sigma)


def check_grid(recorded: tuple[float, ...], sig: list[float], what: str) -> None:
    """Refuse a state made on another grid: a pair state is only the inverse of its own grid."""
    if tuple(recorded) != tuple(sig):
        raise MedinvertError(
            f"the {what} belongs to a {len(recorded) - 1}-step grid from sigma={recorded[0]:.6g}, not to the "
            f"given {len(sig) - 1}-step grid from sigma={sig[0]:.6g}; generate with the sigmas used for inversion"
        )


@dataclass(frozen=True)
class SolverSpec:
    """A registered method.

    Attributes:
        name: registry key.
        summary: one line.
        nfe_per_step: network evaluations per step (``None``: adaptive).
        exact_in: ``"none"``, ``"exact_arithmetic"`` or ``"floating_point"`` (bit-exact round trip).
        order: convergence order of generation on smooth grids (``None``: set by tolerance).
        defaults: the method's options and their default values.
        renamed: former option names -> current names; passing a former name is refused with a
            message naming the current one (the old spelling never silently does something else).
    """

    name: str
    summary: str
    nfe_per_step: int | None
    exact_in: str
    order: int | None
    defaults: Mapping[str, Any]
    _generate: Callable[..., torch.Tensor] = field(repr=False)
    _invert: Callable[..., Any] = field(repr=False)
    renamed: Mapping[str, str] = field(default_factory=dict)

    def options(self, **given: Any) -> dict[str, Any]:
        """The defaults updated with ``given``; unknown or renamed names raise `MedinvertError`."""
        former = sorted(set(given) & set(self.renamed))
        if former:
            moves = ", ".join(f"{old!r} is now {self.renamed[old]!r}" for old in former)
            raise MedinvertError(f"method {self.name!r}: option {moves} (renamed; use the new name)")
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise MedinvertError(f"method {self.name!r} has no option(s) {', '.join(unknown)}; valid: {valid}")
        return {**self.defaults, **given}

    def generate(self, denoiser: EpsModel, state: Any, sigmas: torch.Tensor, *, callback: Callback | None = None, **options: Any) -> torch.Tensor:
        """Run the method's ``generate`` with validated options (see the module docstring)."""
        return self._generate(denoiser, state, sigmas, callback=callback, **self.options(**options))

    def invert(self, denoiser: EpsModel, x0: torch.Tensor, sigmas: torch.Tensor, *, callback: Callback | None = None, **options: Any) -> Any:
        """Run the method's ``invert`` with validated options (see the module docstring)."""
        return self._invert(denoiser, x0, sigmas, callback=callback, **self.options(**options))
