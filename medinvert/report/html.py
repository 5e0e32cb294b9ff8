"""Self-contained HTML report of one reconstruction (`<stem>_report.html`).

One file, no external resources: the CSS is inline, there is no script, and every figure is a PNG
embedded as a base64 ``data:image/png`` URI (`medinvert.report.figures`), so the file can be mailed,
archived or opened offline.  Contents, top to bottom:

1. a summary (source, corruption, model, method; PSNR / SSIM of the input and of the reconstruction
   when a reference is known; data-consistency residual; reproducibility; time);
2. figures: a montage of input (zero-filled / corrupted image), reconstruction, reference and
   ``|error|`` for a few representative slices; the sampling mask of one slice (k-space: the 2-D
   pattern); per-slice PSNR / SSIM of the reconstruction and of the input (with a reference); the
   bounds next to their measured counterparts on a log scale;
3. "bound and reality": every guarantee of the JSON report next to what was measured;
4. a table of every section of the JSON report (`reconstruct_volume`'s sections: settings,
   data_consistency, reproducibility incl. round trip, lipschitz, bounds, metrics, timing, and any
   other keys), long per-slice lists summarised (they are plotted).
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

from medinvert.report.json_report import json_safe

__all__ = ["SECTION_ORDER", "bound_rows", "render_html_report", "write_html_report"]

#: report sections in display order (others follow in the report's own order)
SECTION_ORDER: tuple[str, ...] = ("input", "settings", "data_consistency", "reproducibility", "lipschitz", "bounds",
                                  "validation", "metrics", "timing", "outputs")
#: lists longer than this are summarised in the tables
_LIST_LIMIT = 8
_INPUT_LABELS = {"kspace": "zero-filled |F^H y|", "mask": "masked input", "noise": "noisy input",
                 "blur": "blurred input"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1b1b1b; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ccc; } h3 { font-size: 1.0em; margin: 1.2em 0 0.3em; }
table { border-collapse: collapse; margin: 0.3em 0; font-size: 0.85em; }
th, td { border: 1px solid #d0d0d0; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; } td.num { font-family: ui-monospace, monospace; }
table table { margin: 0; } .what { color: #555; font-size: 0.85em; margin: 0.2em 0 0.6em; }
figure { margin: 0.8em 0; } figcaption { color: #555; font-size: 0.85em; }
img { max-width: 100%; height: auto; } .ok { color: #176b1d; } .bad { color: #a11; }
"""


# ---------------------------------------------------------------------------- formatting
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt_scalar(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return '<span class="ok">yes</span>' if value else '<span class="bad">no</span>'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.6g}"
    return html.escape(str(value))


def _summarise_list(values: Sequence[Any]) -> str:
    numbers = [float(v) for v in values if _is_number(v)]
    finite = [v for v in numbers if math.isfinite(v)]
    text = f"{len(values)} values"
    if finite:
        text += f": min {min(finite):.6g}, mean {sum(finite) / len(finite):.6g}, max {max(finite):.6g}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} not finite)"
    return html.escape(text)


def _fmt(value: Any) -> str:
    """HTML for one report value (nested tables for mappings, summaries for long lists)."""
    if isinstance(value, dict):
        return _table(value)
    if isinstance(value, list):
        if len(value) > _LIST_LIMIT or any(isinstance(v, (dict, list)) for v in value):
            if all(_is_number(v) or v is None or isinstance(v, str) for v in value) and len(value) > _LIST_LIMIT:
                return _summarise_list(value)
            return "<br>".join(_fmt(v) for v in value)
        return ", ".join(_fmt_scalar(v) for v in value) if value else "(none)"
    return _fmt_scalar(value)


def _table(section: dict[str, Any]) -> str:
    rows = []
    for key, value in section.items():
        if key == "what":
            continue
        cls = ' class="num"' if _is_number(value) else ""
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td{cls}>{_fmt(value)}</td></tr>")
    what = section.get("what")
    caption = f'<div class="what">{html.escape(str(what))}</div>' if isinstance(what, str) else ""
    return f"{caption}<table>{''.join(rows)}</table>"


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _get(report: dict[str, Any], *keys: str) -> Any:
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _log10(value: Any) -> float | None:
    if isinstance(value, str) and value in ("inf", "-inf"):
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        return None
    return math.log10(value)


# ---------------------------------------------------------------------------- sections
def bound_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each guarantee of the report next to its measured counterpart.

    Returns rows ``{"quantity", "bound", "measured", "note"}`` (values as stored in the report; a
    missing check gives None): Lipschitz constant of eps, sensitivity of the output to the
    measurement (Grönwall bound vs perturbation experiment), step condition ``h L``, round-trip
    error, data-consistency residual, reproducibility.
    """
    gronwall = _get(report, "bounds", "gronwall_bound")
    log_bound = _get(report, "bounds", "gronwall_log10_bound")
    if (gronwall is None or gronwall == "inf") and _is_number(log_bound):
        gronwall = f"1e{log_bound:.1f}"
    return [
        {"quantity": "Lipschitz constant of eps in x", "bound": _get(report, "lipschitz", "bound"),
         "measured": _get(report, "lipschitz", "empirical"),
         "note": "analytic upper bound at the sampling times vs power iteration (a lower bound)"},
        {"quantity": "sensitivity ||dx|| / ||dy||", "bound": gronwall,
         "measured": _get(report, "bounds", "measured_sensitivity", "ratio"),
         "note": "Grönwall exp(L asinh(sigma_max)) vs perturbing the measurement"},
        {"quantity": "step condition h L", "bound": "< 1", "measured": _get(report, "bounds", "step_condition_max_hL"),
         "note": "each residual step is injective when h L < 1"},
        {"quantity": "round-trip error (max |x - generate(invert(x))|)", "bound": 0.0,
         "measured": _get(report, "reproducibility", "roundtrip", "max_abs_error"),
         "note": "bit-exact inversion must give 0"},
        {"quantity": "data-consistency residual ||A x - y|| / ||y||", "bound": None,
         "measured": _get(report, "data_consistency", "relative_residual"),
         "note": "measured samples of the output vs the measurement (float32 rounding for noiseless data)"},
        {"quantity": "second run identical", "bound": True, "measured": _get(report, "reproducibility", "identical"),
         "note": "SHA-256 of the check slices from two runs"},
    ]


def _bounds_table(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(r['quantity'])}</th><td class=\"num\">{_fmt(r['bound'])}</td>"
        f"<td class=\"num\">{_fmt(r['measured'])}</td><td>{html.escape(r['note'])}</td></tr>"
        for r in bound_rows(report))
    return f"<table><tr><th>quantity</th><th>bound / expected</th><th>measured</th><th>note</th></tr>{rows}</table>"


def _summary(report: dict[str, Any]) -> str:
    from medinvert.signed import IntensityMap

    items: list[tuple[str, str]] = []
    source = _get(report, "input", "source")
    if source:
        items.append(("source", html.escape(str(source))))
    kind, params = _get(report, "input", "kind"), _get(report, "input", "params") or {}
    if kind:
        detail = ""
        if kind == "kspace" and _is_number(params.get("acceleration")):
            detail = f" {params['acceleration']:g}x, centre fraction {params.get('center_fraction')}"
        items.append(("corruption", html.escape(f"{kind}{detail}")))
    settings = report.get("settings") or {}
    if settings:
        items.append(("model", html.escape(f"{settings.get('model')} (sha256 {str(settings.get('model_sha256'))[:12]}...)")))
        items.append(("method", html.escape(f"{settings.get('method')}, {settings.get('steps')} steps, guidance "
                                            f"{settings.get('guidance')}, device {settings.get('device')}")))
        if settings.get("guess") == "cs_tv":
            items.append(("guess", "CS-TV reconstruction of the measurement, refined by the network "
                                   "(medinvert.guess)"))
        intensity_map = IntensityMap.from_report(settings.get("intensity_map"))
        if not intensity_map.identity:
            items.append(("signed intensities", html.escape(f"{intensity_map.describe()}, medinvert.signed")))
    metrics = report.get("metrics")
    if isinstance(metrics, dict):
        zf = metrics.get("zero_filled") or {}
        items.append(("PSNR / SSIM (input)", f"{_fmt(zf.get('psnr'))} dB / {_fmt(zf.get('ssim'))}"))
        items.append(("PSNR / SSIM (reconstruction)", f"{_fmt(metrics.get('psnr'))} dB / {_fmt(metrics.get('ssim'))}"))
    if _get(report, "validation", "applicable"):
        error = _get(report, "validation", "relative_error_withheld")
        flag = ' <span class="bad">not better than zero-filling</span>' if _is_number(error) and error >= 1 else ""
        items.append(("withheld-line error (no reference; zero-filled = 1)",
                      f"{_fmt(error)}{flag}; estimated NMSE {_fmt(_get(report, 'validation', 'nmse_estimate'))} "
                      f"(zero-filled {_fmt(_get(report, 'validation', 'nmse_estimate_zero_filled'))})"))
    residual = _get(report, "data_consistency", "relative_residual")
    if residual is not None:
        items.append(("data-consistency residual", _fmt(residual)))
    if _get(report, "reproducibility", "identical") is not None:
        items.append(("second run identical", _fmt(_get(report, "reproducibility", "identical"))))
    if _get(report, "reproducibility", "roundtrip", "bit_identical") is not None:
        items.append(("round trip bit-identical", _fmt(_get(report, "reproducibility", "roundtrip", "bit_identical"))))
    seconds = _get(report, "timing", "seconds")
    if seconds is not None:
        items.append(("time", f"{_fmt(seconds)} s, {_fmt(_get(report, 'timing', 'nfe'))} NFE"))
    rows = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in items)
    return f"<table>{rows}</table>"


def _figures(report: dict[str, Any], observation: Any, reconstruction: Any, reference: Any,
             slices: Sequence[int] | None) -> str:
    from medinvert.report import figures
    from medinvert.signed import IntensityMap, corrupted_image

    parts = []
    recorded = _get(report, "settings", "intensity_map")  # the map the reconstruction used; else estimate it
    corrupted = (corrupted_image(observation, IntensityMap.from_report(recorded) if recorded else None)
                 if observation is not None else None)
    if reconstruction is not None and corrupted is not None:
        rows = list(slices) if slices is not None else figures.representative_slices(
            reference if reference is not None else corrupted)
        label = _INPUT_LABELS.get(observation.kind, "input")
        png = figures.montage_png(corrupted, reconstruction, reference, rows, input_label=label)
        caption = (f"{label}, reconstruction" + (", reference and |reconstruction - reference|" if reference is not None
                                                 else "") + f" for slices {', '.join(map(str, rows))}.")
        parts.append(_img(png, "montage", caption))
        mask = figures.mask_png(observation, rows[len(rows) // 2]) if rows else None
        if mask is not None:
            parts.append(_img(mask, "sampling mask", "Sampling / keep mask of one slice (white = measured)."))
    per_slice = _get(report, "metrics", "per_slice")
    if isinstance(per_slice, dict):
        baseline = None
        if observation is not None and reference is not None:
            from medinvert.metrics import per_slice_metrics

            baseline = json_safe(per_slice_metrics(corrupted, reference))
        png = figures.per_slice_png(per_slice, baseline, baseline_label=_INPUT_LABELS.get(
            getattr(observation, "kind", ""), "input"))
        parts.append(_img(png, "per-slice metrics", "PSNR and SSIM per slice (fastMRI conventions: data range = "
                                                    "reference volume max); slices without signal are not finite."))
    chart = figures.bounds_png([
        ("Lipschitz of eps", _log10(_get(report, "lipschitz", "bound")), _log10(_get(report, "lipschitz", "empirical"))),
        ("sensitivity dx/dy", _get(report, "bounds", "gronwall_log10_bound") if _is_number(
            _get(report, "bounds", "gronwall_log10_bound")) else None,
         _log10(_get(report, "bounds", "measured_sensitivity", "ratio"))),
    ])
    if chart is not None:
        parts.append(_img(chart, "bounds", "Bounds (upper) and measured values (lower bar), log10 scale."))
    return "".join(parts)


def render_html_report(report: dict[str, Any], *, observation: Any = None, reconstruction: Any = None,
                       reference: Any = None, title: str | None = None, slices: Sequence[int] | None = None) -> str:
    """The HTML text of the report (see the module docstring).

    Args:
        report: the JSON report of `medinvert.reconstruct_volume` (any dict of sections works).
        observation: the `Observation` (its corrupted image and mask are drawn); optional.
        reconstruction: the reconstructed volume ``(X, Y, Z)``; optional.
        reference: the clean volume ``(X, Y, Z)`` (reference and error maps); optional.
        title: page title (default: ``"medinvert reconstruction: <source file name>"``).
        slices: slice indices of the montage (default `figures.representative_slices`).
    """
    safe = json_safe(report)
    source = _get(safe, "input", "source")
    title = title or f"medinvert reconstruction: {Path(str(source)).name if source else 'volume'}"
    body = [f"<h1>{html.escape(title)}</h1>", _summary(safe)]
    figs = _figures(safe, observation, reconstruction, reference, slices)
    if figs:
        body += ["<h2>Figures</h2>", figs]
    body += ["<h2>Bounds and measurements</h2>", _bounds_table(safe), "<h2>Report sections</h2>"]
    keys = [k for k in SECTION_ORDER if k in safe] + [k for k in safe if k not in SECTION_ORDER]
    for key in keys:
        value = safe[key]
        body.append(f'<h3 id="{html.escape(key)}">{html.escape(key)}</h3>')
        body.append(_table(value) if isinstance(value, dict) else f"<p>{_fmt(value)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html_report(path: str | os.PathLike[str], report: dict[str, Any], **kwargs: Any) -> Path:
    """Render (`render_html_report`, same keyword arguments) and write atomically; returns the path."""
    from medinvert.io.atomic import atomic_write_text

    return atomic_write_text(path, render_html_report(report, **kwargs))
