"""Reconstruction reports: strict JSON with every section, and a self-contained HTML page with figures."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _recon_helpers import phantom, write_tiny_model
from medinvert.report import (
    SECTION_ORDER,
    bound_rows,
    json_safe,
    output_paths,
    read_json_report,
    render_html_report,
    write_json_report,
    write_outputs,
)
from medinvert.report.figures import representative_slices

SECTIONS = ("settings", "data_consistency", "reproducibility", "lipschitz", "bounds", "metrics", "timing")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _strict_load(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One real reconstruction (tiny model, checks on) written with `write_outputs`."""
    from medinvert.io import load_volume
    from medinvert.reconstruct import reconstruct_volume

    root = tmp_path_factory.mktemp("report")
    model = write_tiny_model(root / "tiny.pt")
    affine = np.array([[-0.9, 0.0, 0.1, 20.0], [0.0, 1.1, 0.0, -14.0], [0.0, 0.0, 2.5, 7.5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(phantom(), affine), root / "head_t1.nii.gz")
    volume = load_volume(root / "head_t1.nii.gz")
    result = reconstruct_volume(volume, str(model), corruption="kspace:4", steps=3, batch_size=4, checks="fast",
                                return_latent=True)
    paths = output_paths(root / "out", "head_t1", save_latent=True)
    report = write_outputs(result, paths, reference=volume, source_volume=volume)
    return {"paths": paths, "report": report, "result": result, "volume": volume, "affine": affine}


def test_json_report_has_every_section(written):
    text = written["paths"].report_json.read_text()
    report = _strict_load(text)
    for section in SECTIONS:
        assert section in report, section
    assert report["settings"]["method"] == "exact" and report["settings"]["steps"] == 3
    assert len(report["settings"]["model_sha256"]) == 64
    assert report["data_consistency"]["relative_residual"] < 1e-3
    repro = report["reproducibility"]
    assert repro["identical"] is True and repro["run1_sha256"] == repro["run2_sha256"]
    assert repro["roundtrip"]["bit_identical"] is True and repro["roundtrip"]["max_abs_error"] == 0.0
    assert report["lipschitz"]["bound"] >= report["lipschitz"]["empirical"] > 0
    bounds = report["bounds"]
    assert {"step_condition_max_hL", "gronwall_log10_bound", "measured_sensitivity"} <= set(bounds)
    assert bounds["measured_sensitivity"]["ratio"] > 0
    assert len(report["metrics"]["per_slice"]["psnr"]) == 4
    assert report["timing"]["nfe"] > 0 and report["timing"]["seconds"] > 0
    assert report["outputs"]["reconstruction"] == str(written["paths"].recon)
    assert read_json_report(written["paths"].report_json) == report


def test_metrics_in_report_match_independent_formulas(written):
    report = json.loads(written["paths"].report_json.read_text())
    recon = np.asarray(nib.load(written["paths"].recon).dataobj, np.float64)
    ref = np.asarray(written["volume"], np.float64)
    mse = np.mean((recon - ref) ** 2)
    assert report["metrics"]["psnr"] == pytest.approx(10 * math.log10(ref.max() ** 2 / mse), rel=1e-9)
    assert report["metrics"]["nmse"] == pytest.approx(np.sum((recon - ref) ** 2) / np.sum(ref ** 2), rel=1e-9)


def test_outputs_keep_affine_and_measured_kspace(written):
    from medinvert.operators import fft2c, volume_to_slices

    image = nib.load(written["paths"].recon)
    np.testing.assert_allclose(image.affine, written["affine"], atol=1e-6)
    obs = written["result"].observation
    recon = torch.from_numpy(np.asarray(image.dataobj, np.float32)).to(torch.float64)
    k = fft2c(volume_to_slices(recon))
    m = volume_to_slices(obs.mask)
    y = obs.y.to(torch.complex128)
    residual = torch.linalg.vector_norm(k[m] - y[m]) / torch.linalg.vector_norm(y[m])
    assert float(residual) < 1e-3
    assert written["paths"].latent.is_file()


def test_html_is_self_contained_with_embedded_pngs(written):
    text = written["paths"].report_html.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 4  # montage, sampling mask, per-slice metrics, bounds chart
    for data in images:
        assert base64.b64decode(data).startswith(PNG_SIGNATURE)
    assert len(re.findall(r'src="', text)) == len(images)  # nothing loaded from elsewhere
    for forbidden in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert forbidden not in text
    for section in SECTIONS:
        assert f'id="{section}"' in text
    assert "bound / expected" in text and "round-trip error" in text


def test_json_safe_and_strict_writer(tmp_path):
    report = {"metrics": {"psnr": math.inf, "low": -math.inf, "nmse": math.nan, "n": np.int64(3),
                          "x": np.float32(0.5), "per_slice": np.array([1.0, np.inf])},
              "t": torch.tensor([1.5, 2.5]), "p": Path("a/b"), "tuple": (1, 2), "flag": np.bool_(True)}
    safe = json_safe(report)
    assert safe["metrics"] == {"psnr": "inf", "low": "-inf", "nmse": None, "n": 3, "x": 0.5,
                               "per_slice": [1.0, "inf"]}
    assert safe["t"] == [1.5, 2.5] and safe["p"] == "a/b" and safe["tuple"] == [1, 2] and safe["flag"] is True
    path = write_json_report(tmp_path / "r.json", report)
    assert _strict_load(path.read_text())["metrics"]["psnr"] == "inf"
    assert float(_strict_load(path.read_text())["metrics"]["psnr"]) == math.inf
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    with pytest.raises(TypeError):
        json_safe({"bad": object()})


def test_representative_slices_avoid_empty_slices():
    volume = np.zeros((16, 16, 20))
    volume[4:12, 4:12, 6:15] = 1.0
    picks = representative_slices(volume, 3)
    assert len(picks) == 3 and all(6 <= k < 15 for k in picks) and picks == sorted(picks)
    assert representative_slices(np.zeros((8, 8, 2)), 3) == [0, 1]


def test_html_from_a_report_alone_and_bound_rows():
    report = {"input": {"source": "x.nii.gz"}, "settings": {"method": "exact"},
              "lipschitz": {"bound": 12.0, "empirical": 0.5, "what": "explained"},
              "bounds": {"gronwall_bound": math.inf, "gronwall_log10_bound": 400.0,
                         "measured_sensitivity": {"ratio": 2.0}},
              "metrics": {"per_slice": {"psnr": [30.0, math.inf], "ssim": [0.9, 1.0], "nmse": [0.01, 0.0]}}}
    text = render_html_report(report, title="t")
    assert text.count("data:image/png;base64,") == 2  # per-slice plot and bounds chart, no volume given
    assert "explained" in text and "1e400.0" in text
    rows = {r["quantity"]: r for r in bound_rows(json_safe(report))}
    assert rows["Lipschitz constant of eps in x"]["bound"] == 12.0
    assert rows["sensitivity ||dx|| / ||dy||"]["measured"] == 2.0
    assert SECTION_ORDER.index("settings") < SECTION_ORDER.index("timing")


def test_html_summary_flags_a_reconstruction_no_better_than_zero_filling():
    def page(error: float) -> str:
        return render_html_report({"validation": {"applicable": True, "relative_error_withheld": error,
                                                  "nmse_estimate": 0.01, "nmse_estimate_zero_filled": 0.02}},
                                  title="t")

    assert "withheld-line error" in page(0.6) and "not better than zero-filling" not in page(0.6)
    assert "not better than zero-filling" in page(1.2)


def test_html_summary_names_the_cs_tv_guess():
    def page(guess: str) -> str:
        return render_html_report({"settings": {"method": "exact", "steps": 10, "guess": guess}}, title="t")

    assert "CS-TV reconstruction of the measurement" in page("cs_tv")
    assert "CS-TV reconstruction of the measurement" not in page("adjoint")
