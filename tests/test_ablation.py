"""Smoke test of ``benchmarks/ablation.py``: variant specs, train-or-skip, refusal of foreign checkpoints, table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from medinvert.errors import MedinvertError
from medinvert.models.checkpoint import load_checkpoint
from medinvert.train import DEFAULT_ARCHITECTURE

ROOT = Path(__file__).resolve().parent.parent
SMALL = tuple({**DEFAULT_ARCHITECTURE, "channels": [8, 16], "emb_dim": 32, "time_dim": 16}.items())


def _load_ablation():
    spec = importlib.util.spec_from_file_location("benchmark_ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ablation = _load_ablation()


@pytest.fixture
def tiny_data(tmp_path: Path, make_nifti) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    x, y = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 20), indexing="ij")
    head = ((x / 0.8) ** 2 + (y / 0.7) ** 2 < 1).astype(np.float32) * 500
    make_nifti(root / "BraTS2021_00000_t1.nii.gz", np.repeat(head[:, :, None], 4, axis=2), np.eye(4))
    return root


def test_variant_specs_set_the_controls_they_name() -> None:
    by_key = {v.key: v for v in ablation.variants(penalty_weight=0.03)}
    recipe = ablation.Recipe(data="d")
    assert set(by_key) == {"a", "b", "c", "d", "e", "f"}
    assert by_key["a"].architecture(recipe)["spectral_norm"] is False
    assert by_key["c"].architecture(recipe)["sn_target"] == 2.0 and by_key["c"].architecture(recipe)["spectral_norm"]
    assert by_key["e"].architecture(recipe)["block"] == "coupling"
    config = by_key["d"].train_config(recipe, Path("/w"), penalty_target=0.5)
    assert (config.lipschitz_penalty, config.lipschitz_target, config.prediction) == (0.03, 0.5, "edm_adjoint")
    assert config.out == str(Path("/w") / "d.pt")
    with pytest.raises(MedinvertError):
        ablation.check_work_dir(ROOT / "medinvert" / "models")


def test_trains_once_then_reuses_and_refuses_other_settings(tiny_data: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    recipe = ablation.Recipe(data=str(tiny_data), modality="t1", steps=2, batch_size=2, crop=16, warmup=1,
                             architecture=SMALL)
    coupling = next(v for v in ablation.variants() if v.key == "e")
    first = ablation.train_variant(coupling, recipe, work, 0.5)
    assert first["trained_now"] and first["completed_steps"] == 2
    model, _ = load_checkpoint(first["checkpoint"])
    assert model.config["block"] == "coupling" and model.config["spectral_norm"] is False
    again = ablation.train_variant(coupling, recipe, work, 0.5)
    assert not again["trained_now"] and again["checkpoint"] == first["checkpoint"]
    longer = ablation.Recipe(**{**recipe.__dict__, "steps": 3})
    with pytest.raises(MedinvertError, match="steps"):
        ablation.train_variant(coupling, longer, work, 0.5)


def test_table_has_one_line_per_variant_and_reference() -> None:
    row = {"key": "a", "label": "no SN", "train_seconds": 91.4, "final_loss": 0.91, "lip_bound_any_t": 3.0e6,
           "lip_bound_sampling": 1.5e5, "lip_empirical": 0.37, "roundtrip": {"edict@10": 3.1e-3, "bdia@10": 0.0},
           "sensitivity": 1.09, "psnr": 28.954, "ssim": 0.76021}
    table = ablation.format_table([row], [10], {"zero-filled": {"psnr": 28.57, "ssim": 0.7288}}).splitlines()
    assert len(table) == 4 and all(line.count("|") == table[0].count("|") for line in table)
    assert "EDICT rel. err. 10" in table[0]
    assert "| (a) no SN | 91 | 0.91 | 3.00e+06 | 1.50e+05 | 0.37 | 3.10e-03 | 0 | 1.09 | 28.95 | 0.7602 |" == table[2]
    assert table[3].startswith("| zero-filled |") and table[3].endswith("| 28.57 | 0.7288 |")
