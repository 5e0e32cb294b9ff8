"""PNG figures of a reconstruction report (matplotlib, Agg canvas; no pyplot global state, no display).

Every function returns the PNG bytes of one figure (`png_bytes`), ready to embed as a base64
``data:image/png`` URI.  Volumes are ``(X, Y, Z)`` arrays (slices along axis 2, the medinvert layout);
a slice is drawn transposed with the origin at the lower left, so array axis 0 runs left to right
and axis 1 bottom to top.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["png_bytes", "representative_slices", "montage_png", "mask_png", "per_slice_png", "bounds_png"]

#: fraction of the largest slice energy a slice needs to count as "inside the object"
_ENERGY_FRACTION = 0.1


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """Render ``fig`` to PNG bytes (no software / time stamp metadata, so same figure -> same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _array(volume: Any) -> np.ndarray:
    if hasattr(volume, "detach"):
        import torch

        volume = torch.Tensor.numpy(volume.detach().cpu().as_subclass(torch.Tensor).to(torch.float64))
    array = np.asarray(volume, dtype=np.float64)
    return array[:, :, None] if array.ndim == 2 else array


def representative_slices(volume: Any, n: int = 3) -> list[int]:
    """``n`` slice indices spread over the slices that hold the object (sum of ``|v|`` at least 10% of
    the largest slice's), at the quantiles ``1/(n+1) .. n/(n+1)`` of that range; fewer when the
    volume has fewer such slices."""
    array = np.abs(_array(volume))
    energy = array.reshape(-1, array.shape[2]).sum(axis=0)
    if not np.any(energy > 0):
        candidates = list(range(array.shape[2]))
    else:
        candidates = [int(k) for k in np.nonzero(energy >= _ENERGY_FRACTION * energy.max())[0]]
    if len(candidates) <= n:
        return candidates
    picks = [candidates[int(round((i + 1) * (len(candidates) - 1) / (n + 1)))] for i in range(n)]
    return sorted(set(picks))


def _window(reference: np.ndarray) -> tuple[float, float]:
    """Display range shared by a row: 0.5 / 99.5 percentiles of the reference slice."""
    low, high = np.percentile(reference, [0.5, 99.5])
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def montage_png(corrupted: Any, reconstruction: Any, reference: Any = None, slices: Sequence[int] | None = None,
                *, input_label: str = "input") -> bytes:
    """Rows = ``slices``; columns = input (corrupted / zero-filled), reconstruction, and with a
    reference: the reference and the absolute error ``|reconstruction - reference|``.

    Input, reconstruction and reference share one grey window per row (from the reference when given,
    else the input), so intensities compare directly; the error map has its own colour bar.
    """
    inp, rec = _array(corrupted), _array(reconstruction)
    ref = None if reference is None else _array(reference)
    rows = list(slices) if slices is not None else representative_slices(ref if ref is not None else inp)
    columns = [(input_label, inp), ("reconstruction", rec)]
    if ref is not None:
        columns.append(("reference", ref))
    n_cols = len(columns) + (1 if ref is not None else 0)
    aspect = inp.shape[1] / max(1, inp.shape[0])
    fig = _figure(2.4 * n_cols + (0.6 if ref is not None else 0.0), 2.4 * aspect * len(rows) + 0.4)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, k in enumerate(rows):
        low, high = _window((ref if ref is not None else inp)[:, :, k])
        for c, (label, data) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(data[:, :, k].T, origin="lower", cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"{label}, slice {k}" if r == 0 or c == 0 else f"slice {k}", fontsize=8)
            ax.set_axis_off()
        if ref is not None:
            error = np.abs(rec[:, :, k] - ref[:, :, k])
            ax = axes[r][n_cols - 1]
            top = float(np.percentile(error, 99.5)) or 1.0
            shown = ax.imshow(error.T, origin="lower", cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
            ax.set_title(f"|error|, slice {k}", fontsize=8)
            ax.set_axis_off()
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    return png_bytes(fig)


def mask_png(observation: Any, slice_index: int) -> bytes | None:
    """The sampling / keep mask of one slice: for k-space the 2-D sampling pattern (centred k-space,
    white = measured), for masking the kept voxels, for blur the kernel; None for pure noise."""
    kind = observation.kind
    if kind == "noise":
        return None
    if kind == "blur":
        data, title = _array(observation.kernel)[:, :, 0], "blur kernel"
        cmap, extent_label = "viridis", ("kernel axis 0", "kernel axis 1")
    else:
        data = _array(observation.mask)[:, :, slice_index]
        fraction = 100.0 * float(data.mean())
        title = (f"k-space sampling mask, slice {slice_index} ({fraction:.1f}% measured)" if kind == "kspace"
                 else f"kept voxels, slice {slice_index} ({fraction:.1f}% kept)")
        cmap = "gray"
        extent_label = ("k-space axis 0" if kind == "kspace" else "axis 0",
                        "k-space axis 1" if kind == "kspace" else "axis 1")
    aspect = data.shape[1] / max(1, data.shape[0])
    fig = _figure(3.6, 3.6 * aspect + 0.5)
    ax = fig.subplots()
    ax.imshow(data.T, origin="lower", cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(extent_label[0], fontsize=7)
    ax.set_ylabel(extent_label[1], fontsize=7)
    ax.tick_params(labelsize=6)
    return png_bytes(fig)


def _finite(values: Sequence[Any]) -> np.ndarray:
    out = np.array([float(v) if isinstance(v, (int, float)) else math.nan for v in values], dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def per_slice_png(per_slice: dict[str, Sequence[Any]], baseline: dict[str, Sequence[Any]] | None = None,
                  *, baseline_label: str = "input") -> bytes:
    """PSNR and SSIM per slice of the reconstruction (and of ``baseline``, e.g. the zero-filled image).
    Non-finite values (a slice identical to its reference, an empty reference slice) are left out."""
    fig = _figure(7.0, 2.6)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, key, unit in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        values = _finite(per_slice.get(key, []))
        ax.plot(np.arange(len(values)), values, lw=1.2, label="reconstruction")
        if baseline is not None:
            other = _finite(baseline.get(key, []))
            ax.plot(np.arange(len(other)), other, lw=1.0, ls="--", label=baseline_label)
        ax.set_xlabel("slice", fontsize=7)
        ax.set_ylabel(unit, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return png_bytes(fig)


def bounds_png(rows: Sequence[tuple[str, float | None, float | None]]) -> bytes | None:
    """Bar chart of ``(label, log10 bound, log10 measured)`` rows, bound and measurement side by side
    (log10 values, so a Grönwall bound of 1e300 still draws); rows with a missing or non-finite value
    are left out (None when none is left)."""
    kept = [(label, float(b), float(m)) for label, b, m in rows
            if b is not None and m is not None and math.isfinite(b) and math.isfinite(m)]
    if not kept:
        return None
    fig = _figure(6.0, 0.9 + 0.55 * len(kept))
    ax = fig.subplots()
    positions = np.arange(len(kept))
    ax.barh(positions + 0.2, [b for _, b, _ in kept], height=0.38, label="bound")
    ax.barh(positions - 0.2, [m for _, _, m in kept], height=0.38, label="measured")
    ax.set_yticks(positions, [label for label, _, _ in kept], fontsize=7)
    ax.set_xlabel("log10 of the value", fontsize=7)
    ax.axvline(0.0, color="black", lw=0.6)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    return png_bytes(fig)
