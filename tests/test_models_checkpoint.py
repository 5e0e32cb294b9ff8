"""Checkpoint files: bitwise round trip, safe loading (pickled code never runs), corruption, names."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

import medinvert
from medinvert.errors import MedinvertError
from medinvert.models import (
    LipschitzUNet,
    freeze_spectral_norm,
    load_checkpoint,
    load_model,
    model_sha256,
    read_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from medinvert.models import registry
from medinvert.models.layers import FiLM

SMALL = {"channels": (8, 16, 32), "emb_dim": 32, "time_dim": 16, "n_cond_channels": 1}


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained_model(seed: int = 0, **kwargs: object) -> LipschitzUNet:
    """A small model after a few optimiser steps (weights and power-iteration vectors moved)."""
    torch.manual_seed(seed)
    model = LipschitzUNet(**{**SMALL, **kwargs})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FiLM):
                module.proj.weight.normal_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(2, model.in_channels, 16, 16)
    for _ in range(3):
        loss = model(x, torch.rand(2), torch.randn(2, 8)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, 23, 30, generator=gen), torch.rand(3, generator=gen), torch.randn(3, 8, generator=gen)


def test_round_trip_gives_bitwise_identical_outputs(tmp_path: Path) -> None:
    model = _trained_model()
    config = {"modality": "t1", "schedule": {"kind": "cosine"}, "prediction": "eps",
              "normalisation": "robust percentile 0.5-99.5 -> [0, 1]", "data": {"cases": 3}}
    path = save_checkpoint(tmp_path / "model.pt", model, config, step=17)
    loaded, loaded_config = load_checkpoint(path)
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), loaded(x, t, cond))
        assert torch.equal(model(x, t, None), loaded(x, t, None))
    assert state_dict_sha256(model.state_dict()) == state_dict_sha256(loaded.state_dict())
    assert not loaded.training
    assert loaded_config["architecture"] == model.config
    assert loaded_config["step"] == 17
    assert loaded_config["modality"] == "t1"
    assert loaded_config["schedule"] == {"kind": "cosine"}
    assert loaded_config["medinvert_version"] == medinvert.__version__
    assert loaded_config["format_version"] == 1
    assert "created" in loaded_config
    # atomic write: no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_file_is_plain_tensors_and_json(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), {"modality": "t2"})
    payload = torch.load(path, weights_only=True)  # must succeed without any allow-listing
    assert isinstance(json.loads(payload["config"]), dict)
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def test_frozen_model_round_trip(tmp_path: Path) -> None:
    model = freeze_spectral_norm(_trained_model(seed=3))
    path = save_checkpoint(tmp_path / "frozen.pt", model, {})
    loaded, _ = load_checkpoint(path)
    assert not any(hasattr(m, "parametrizations") for m in loaded.modules())
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), loaded(x, t, cond))


def test_ema_weights_and_optimizer_state(tmp_path: Path) -> None:
    model = _trained_model(seed=4)
    other = _trained_model(seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(torch.randn(1, 2, 8, 8), torch.rand(1)).sum().backward()
    optimizer.step()
    model.eval()
    path = save_checkpoint(tmp_path / "ema.pt", model, {}, ema_state=other.state_dict(),
                           optimizer_state=optimizer.state_dict(), step=9)
    x, t, cond = _inputs()
    ema_model, _ = load_checkpoint(path)
    raw_model, _ = load_checkpoint(path, use_ema=False)
    with torch.no_grad():
        assert torch.equal(ema_model(x, t, cond), other(x, t, cond))
        assert torch.equal(raw_model(x, t, cond), model(x, t, cond))
    payload = read_checkpoint(path)
    restored = torch.optim.AdamW(raw_model.parameters(), lr=1e-3)
    restored.load_state_dict(payload["optimizer_state"])
    assert payload["step"] == 9
    with pytest.raises(MedinvertError, match="ema_state"):
        save_checkpoint(tmp_path / "bad.pt", model, {}, ema_state={"x": torch.zeros(1)})


def test_unserialisable_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MedinvertError, match="JSON"):
        save_checkpoint(tmp_path / "c.pt", _trained_model(), {"loss": float("nan")})
    with pytest.raises(MedinvertError, match="JSON"):
        save_checkpoint(tmp_path / "c.pt", _trained_model(), {"fn": print})
    assert not (tmp_path / "c.pt").exists()


class _Payload:
    """Unpickling this object (with an unsafe loader) runs code that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    good = save_checkpoint(tmp_path / "good.pt", _trained_model(), {})
    payload = torch.load(good, weights_only=True)
    payload["extra"] = _Payload(marker)
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(MedinvertError) as info:
        load_checkpoint(evil)
    assert str(info.value) == f"{evil}: checkpoint contains pickled code; refusing to load"
    with pytest.raises(MedinvertError, match="pickled code"):
        load_model(str(evil))
    assert not marker.exists()
    # control: the payload is live -- an unsafe loader does run it
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "code ran"


def test_plain_pickle_with_code_is_refused(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "marker2.txt"
    evil = tmp_path / "legacy.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    with pytest.raises(MedinvertError, match="pickled code"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path: Path, fraction: float) -> None:
    good = save_checkpoint(tmp_path / "good.pt", _trained_model(), {})
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(MedinvertError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert message.startswith(str(bad))
    assert "\n" not in message
    assert "pickled code" not in message


def test_corrupted_pickle_inside_archive_is_refused(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", _trained_model(), {})
    bad = tmp_path / "flipped.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data[:40] + bytes(b ^ 0x5A for b in data[40:80]) + data[80:]
            dst.writestr(info, data)
    with pytest.raises(MedinvertError, match=str(bad)):
        load_checkpoint(bad)


def test_random_bytes_and_foreign_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(MedinvertError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(MedinvertError, match="not a medinvert checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(MedinvertError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_newer_format_and_mismatched_weights_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), {})
    payload = torch.load(path, weights_only=True)
    newer = dict(payload, format_version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(MedinvertError, match="format version"):
        load_checkpoint(tmp_path / "newer.pt")
    config = json.loads(payload["config"])
    config["architecture"]["channels"] = [8, 16, 64]
    torch.save(dict(payload, config=json.dumps(config)), tmp_path / "mismatch.pt")
    with pytest.raises(MedinvertError, match="do not match"):
        load_checkpoint(tmp_path / "mismatch.pt")
    config["architecture"]["width"] = 3
    torch.save(dict(payload, config=json.dumps(config)), tmp_path / "unknown.pt")
    with pytest.raises(MedinvertError, match="unknown architecture option"):
        load_checkpoint(tmp_path / "unknown.pt")


def test_model_sha256_is_the_file_digest(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_model(), {})
    assert model_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_model_by_path_and_unknown_name(tmp_path: Path) -> None:
    model = _trained_model()
    path = save_checkpoint(tmp_path / "m.pt", model, {"modality": "flair"})
    loaded, config = medinvert.load_model(str(path))
    assert config["modality"] == "flair"
    x, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), model(x, t, cond))
    with pytest.raises(MedinvertError) as info:
        medinvert.load_model("no-such-model")
    message = str(info.value)
    for name in registry.MODEL_NAMES:
        assert name in message


def test_shipped_names_and_aliases_resolve_to_weights_folder() -> None:
    installed = registry.available_models()
    for alias, name in registry.ALIASES.items():
        if name in installed:
            assert registry.resolve_model(alias) == installed[name]
        else:
            with pytest.raises(MedinvertError, match=f"shipped model '{name}' is not installed"):
                registry.resolve_model(alias.upper())
    for name, path in installed.items():  # every shipped checkpoint must load and be lean
        model, config = load_model(name)
        assert path.stat().st_size <= 10 * 2**20
        assert config["architecture"] == model.config
