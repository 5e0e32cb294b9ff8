"""`reconstruct_volume`: the Python entry point of the main job, with its checks and report.

    result = reconstruct_volume(observation_or_volume, model=None, corruption="kspace:4", ...)
    result.volume   # MetaTensor (X, Y, Z), float32, the input's affine and intensity units
    result.latent   # medinvert.latent.Latent: exact inversion of the output under the condition
    result.report   # dict, the JSON report (sections below)

The algorithm is `medinvert.engine.run_reconstruction`, applied to the observation of
``s (x - c)`` when the volume is signed (`medinvert.signed`); the output, data consistency and
metrics are in the volume's own units.  The report's sections:

``settings``          method, steps, guidance, batch size, seed, model name + SHA-256, versions, device,
                      the guess the network was conditioned on (`medinvert.guess`), the intensity
                      map of a signed (z-scored, negated) volume (`medinvert.signed`; identity for
                      magnitude images).
``data_consistency``  ``||A x - y|| / ||y||`` of the output (normalised units; the measured k-space
                      lines of a noiseless reconstruction match to float32 rounding).
``reproducibility``   SHA-256 of the output, and of a second run of the check slices compared with
                      the first; the bit-exact round trip of the check slices of the output through
                      ``invert`` / ``generate`` (method ``exact``).
``lipschitz``         analytic upper bound (`lipschitz_upper_bound` at the sampling times and for every
                      time) and empirical estimate (`lipschitz_empirical`) of ``x -> eps(x, t, c)``.
``bounds``            the step condition ``h * L`` (i-ResNet injectivity when < 1), the Grönwall
                      sensitivity bound ``exp(L asinh(sigma_max))`` of the flow map, and the measured
                      sensitivity ``||x(y + d) - x(y)|| / ||A^H d||`` for a small perturbation ``d``.
``validation``        reference-free error estimate for k-space data: measured outer lines withheld on
                      the check slices, reconstructed without them and predicted (relative error, and
                      the image NMSE it implies, next to zero-filling's; `medinvert.kspace_validation`).
``metrics``           PSNR / SSIM / NMSE against ``reference`` (fastMRI conventions) and per slice.
``timing``            seconds, NFE, slices per second, peak resident memory.

"Check slices" are one batch in the middle of the volume's measured slices (``checks="fast"``,
default) or the whole volume (``checks="full"``); ``checks="none"`` skips them (and the empirical
Lipschitz estimate, which is then None).
"""

from __future__ import annotations

import hashlib
import math
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medinvert.engine import (default_grid, default_model_name, default_steps, is_denoising,  # noqa: F401
                              run_reconstruction, start_noise)
from medinvert.determinism import float32_default
from medinvert.errors import MedinvertError
from medinvert.guess import uses_tv
from medinvert.operators import Observation
from medinvert.signed import corrupted_image, estimate_intensity_map, map_observation

__all__ = ["ReconstructionResult", "reconstruct_volume", "load_observation_input"]

CHECK_MODES = ("fast", "full", "none")


@dataclass
class ReconstructionResult:
    """Output of `reconstruct_volume`."""

    volume: Any                      # MetaTensor (X, Y, Z) float32
    latent: Any                      # medinvert.latent.Latent or None (return_latent=False)
    report: dict[str, Any]
    observation: Observation


def load_observation_input(source: Any, corruption: str | None, seed: int,
                           measured: str | None = None, name: str | None = None) -> tuple[Observation, Any]:
    """``(observation, clean volume or None)`` from an Observation, an observation file / `corrupt`
    output folder, a clean volume (path / MetaTensor) plus a corruption spec, or a noisy volume that is
    itself the measurement plus a ``measured`` spec (`medinvert.transforms.measured`; no clean volume).
    ``name`` seeds a simulated corruption as `medinvert.transforms.corrupt` does (default: the file name)."""
    from medinvert.io import load_volume
    from medinvert.transforms import corrupt, measured_noise, parse_corruption_spec, parse_measured_spec

    if measured is not None:
        if corruption is not None or isinstance(source, Observation):
            raise MedinvertError("a measured volume takes neither a corruption spec nor an observation")
        spec = parse_measured_spec(measured)
        volume = load_volume(source) if isinstance(source, (str, Path)) else source
        return measured_noise(volume, spec["sigma"], spec["noise_model"]), None
    if isinstance(source, Observation):
        if corruption is not None:
            raise MedinvertError("give either an observation or a corruption spec, not both")
        return source, None
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and corruption is None:
        if path.is_dir():
            found = sorted(path.glob("*_observation.json"))
            if len(found) != 1:
                raise MedinvertError(f"expected one *_observation.json in the folder, found {len(found)} "
                                     "(or pass --corruption to simulate from a clean volume)", path)
            path = found[0]
        if path.name.endswith(("_observation.json", "_observation.npz")):
            return Observation.load(path), None
        raise MedinvertError("a clean volume needs a corruption spec (--corruption kspace:4 ...)", path)
    if corruption is None:
        raise MedinvertError("a clean volume needs a corruption spec (corruption='kspace:4' ...)")
    volume = load_volume(path) if path is not None else source
    kind, params = parse_corruption_spec(corruption)
    return corrupt(volume, kind, seed=seed, name=name, **params), volume


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _check_slices(measured: list[int], batch_size: int, mode: str) -> list[int]:
    if mode == "full":
        return list(measured)
    middle = max(0, len(measured) // 2 - batch_size // 2)
    return measured[middle:middle + batch_size]


def _relative_residual(observation: Observation, volume: torch.Tensor) -> float:
    from medinvert.operators.layout import volume_to_slices

    operator = observation.operator()
    predicted = operator.forward(volume_to_slices(volume.to(torch.float64)))
    y = observation.y.to(predicted.dtype)
    if observation.kind in ("kspace", "mask"):  # compare measured samples only
        predicted = predicted * volume_to_slices(observation.mask).to(predicted.real.dtype)
    norm = float(torch.linalg.vector_norm(y))
    return float(torch.linalg.vector_norm(predicted - y)) / norm if norm > 0 else 0.0


def _versions() -> dict[str, str]:
    import monai

    from medinvert import __version__

    return {"medinvert": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _lipschitz(net: torch.nn.Module, prediction: str, schedule: Any, steps: int,
               cond: torch.Tensor, shape: tuple[int, int], empirical: bool = True,
               sigmas: list[float] | None = None) -> dict[str, Any]:
    """Analytic bound and empirical estimate of the network's Lipschitz constant in x, and of eps's.

    ``empirical=False`` (``checks="none"``) skips the power iteration (the estimate is then None).
    ``sigmas``: the sampling grid actually used (default ``schedule.sigmas(steps)``).

    For v-prediction ``eps = sqrt(1 - abar) x + sqrt(abar) v(x)``, so ``Lip(eps) <= 1 + Lip(v)``; for
    ``edm_adjoint`` see `_eps_offset`.
    """
    from medinvert.models.lipschitz import lipschitz_empirical, lipschitz_upper_bound

    grid = [float(v) for v in (schedule.sigmas(steps) if sigmas is None else sigmas)]
    times = [float(schedule.t_of_sigma(v)) for v in grid[:-1]]
    factor = float(getattr(net, "lipschitz_factor", 1.0))  # a 3D network over blended windows
    net = getattr(net, "core", net)
    channels = int(getattr(net, "in_channels", 2))
    bound_all = factor * lipschitz_upper_bound(net)
    bound_sampling = factor * lipschitz_upper_bound(net, t=times, cond=cond)
    # a 64x64 probe keeps it cheap (64x64x8 for a 3D network)
    probe_shape = (1, channels, min(64, shape[0]), min(64, shape[1]), *((8,) if getattr(net, "spatial_dims", 2) == 3 else ()))
    estimate = (lipschitz_empirical(net, probe_shape, t=times[len(times) // 2], cond=cond, n_iter=8)
                if empirical else None)
    offset = _eps_offset(prediction, grid[:-1])
    return {"network_bound_any_time": bound_all, "network_bound": bound_sampling, "network_empirical": estimate,
            "prediction": prediction, "bound": offset + bound_sampling, "empirical": estimate,
            "what": "Lipschitz constant in x (Euclidean norm, per slice) of the network output and of eps "
                    "(bound, = 1 + network bound for v-prediction); network_bound = analytic upper bound at "
                    "the sampling times (network_bound_any_time: for every t); empirical = power iteration "
                    "on J^T J of the network at the middle sampling time on a 64x64 probe (a lower bound)"}


def _eps_offset(prediction: str, sigmas: list[float]) -> float:
    """``a`` in ``Lip_x(eps) <= a + Lip_x(network)`` at the sampling levels ``sigmas`` (all > 0).

    v / v_adjoint: ``eps = sqrt(1 - abar) x + sqrt(abar) out`` gives ``a = 1``.  edm_adjoint
    (`medinvert.denoiser`): ``eps = ((1 - c_skip) (xbar - m) - c_out out) / sigma`` with
    ``xbar = sqrt(1 + sigma^2) x``; ``c_out / sigma <= 1`` and the skip part contributes
    ``a = max_sigma sqrt(1 + sigma^2) sigma / (sigma^2 + s_d^2)`` (largest for the smaller ``s_d``).
    eps-prediction: ``a = 0``.
    """
    if prediction in ("v", "v_adjoint"):
        return 1.0
    if prediction == "edm_adjoint":
        from medinvert.denoiser import SIGMA_DATA_GUESS

        sd2 = SIGMA_DATA_GUESS ** 2
        return max(math.sqrt(1 + s * s) * s / (s * s + sd2) for s in sigmas if s > 0)
    return 0.0


def _bounds(lip: float, schedule: Any, steps: int, grid: list[float] | None = None) -> dict[str, Any]:
    """Step condition and Grönwall bound in DDIM-ODE coordinates (docs/lipschitz.md) on the sampling
    grid ``grid`` (default ``schedule.sigmas(steps)``)."""
    sigmas = [float(s) for s in (schedule.sigmas(steps) if grid is None else grid)]
    # Lip of xbar -> eps is Lip_x / sqrt(1 + sigma^2) since x = xbar / sqrt(1 + sigma^2)
    step_products = [abs(sigmas[i] - sigmas[i + 1]) * lip / math.sqrt(1 + sigmas[i] ** 2)
                     for i in range(len(sigmas) - 1)]
    exponent = lip * math.asinh(sigmas[0])
    return {
        "step_condition_max_hL": max(step_products),
        "step_condition_holds": max(step_products) < 1.0,
        "gronwall_log10_bound": exponent / math.log(10),
        "gronwall_bound": math.exp(exponent) if exponent < 700 else float("inf"),
        "what": "h*L = max_i |sigma_i - sigma_{i+1}| L / sqrt(1 + sigma_i^2) on the grid used (each residual "
                "step injective when < 1); Grönwall: ||Phi(z) - Phi(z')|| <= exp(L asinh(sigma_0)) ||z - z'||, "
                "sigma_0 the top of that grid",
    }


@float32_default
def reconstruct_volume(
    observation_or_volume: Any,
    model: Any = None,
    *,
    corruption: str | None = None,
    measured: str | None = None,
    method: str = "exact",
    steps: int | None = None,
    guidance: float = 1.0,
    batch_size: int = 8,
    device: str = "cpu",
    reference: Any = None,
    seed: int = 0,
    start: str = "guess",
    checks: str = "fast",
    return_latent: bool = True,
    progress: bool = False,
    threads: int | None = None,
    name: str | None = None,
) -> ReconstructionResult:
    """Reconstruct a volume from its observation (see the module docstring for the report).

    Args:
        observation_or_volume: an `Observation`, an observation file / `medinvert corrupt` output
            folder, or a clean volume together with ``corruption``: a path, or a MetaTensor / tensor /
            array of shape ``(X, Y, Z)`` (``(X, Y, Z, 1)`` and channel-first ``(1, X, Y, Z)`` are
            squeezed; the result is ``(X, Y, Z)``).
        model: shipped model name, checkpoint path, module (one from `medinvert.load_model` keeps its
            training config), ``(module, config)``, or None (the shipped model of the volume's
            modality, ``t1`` when unknown).
        corruption: spec such as ``"kspace:4"``, ``"kspace:8:0.04"``, ``"mask:box"``, ``"noise:0.05"``,
            ``"blur:gaussian:2"`` (`medinvert.transforms.parse_corruption_spec`), to simulate.
        measured: ``"noise[:auto|SIGMA][:MODEL]"``: the volume itself is noisy data to denoise
            (`medinvert.transforms.measured`; sigma estimated when not given); no reference implied.
        method: a solver of `medinvert.solvers.SOLVERS` (default ``exact``).
        steps: sampling grid size; None = `medinvert.engine.default_steps` (10 for k-space with a model
            refining the CS-TV guess, as the shipped ones do; 20 otherwise).
        guidance, batch_size: CFG weight, slices per network call.
        device: ``"cpu"`` or ``"cuda"``.
        reference: clean volume (path / MetaTensor / tensor) for the metrics; defaults to the clean
            volume when simulating.
        seed: seeds the corruption (when simulating) and, with the source name, the start noise.
        start: ``"guess"`` (default; noise-free start at the model's guess -- the adjoint image, or the
            CS-TV reconstruction for models trained with it, `medinvert.guess` -- close to the posterior
            mean) or ``"noise"`` (seeded posterior sample); `medinvert.engine`, step 3.
        checks: ``"fast"``, ``"full"`` or ``"none"`` (reproducibility / round-trip / sensitivity /
            withheld-line validation, on one batch of slices, on all of them, or not at all).
        return_latent: also invert the output exactly (one more pass) into ``result.latent``.  For a
            signed volume this is the latent of the image the network reconstructed, ``s (x - c)``
            (``report["settings"]["intensity_map"]``): `generate` gives that image back bit for bit, and
            ``sign * image + offset`` is the output.
        threads: intra-op threads (default `medinvert.determinism.default_threads`).
        name: the volume's name, which seeds a simulated corruption (as ``medinvert corrupt`` names each
            volume by its output stem; default: the file name in the volume's metadata) and the seeds
            of the start noise and the withheld-line check (default: the name the observation records,
            else its source's file name).
    """
    from medinvert.determinism import deterministic
    from medinvert.inversion import invert, resolve_network, roundtrip
    from medinvert.io.nifti import make_meta_tensor
    from medinvert.io.naming import guess_modality
    from medinvert.transforms.seeding import seed_from_name

    if checks not in CHECK_MODES:
        raise MedinvertError(f"checks must be one of {', '.join(CHECK_MODES)}, got {checks!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedinvertError("device 'cuda' requested but no CUDA device is available")
    observation, clean = load_observation_input(observation_or_volume, corruption, seed, measured, name)
    ref_t = _reference_volume(clean if reference is None else reference, observation.shape)  # checked before work
    intensity_map = estimate_intensity_map(observation)
    mapped = map_observation(observation, intensity_map)  # what the network reconstructs (`medinvert.signed`)
    source = observation.source or "volume"
    modality = observation.modality or (guess_modality(source) if observation.source else None)
    resolved = resolve_network(model if model is not None else default_model_name(modality))
    net = resolved.net.to(device)
    steps = default_steps(observation.kind, resolved.guess) if steps is None else steps
    # seeded by the volume's recorded name, not the path as typed ("." names the working directory)
    base_seed = seed_from_name(name or observation.params.get("name") or Path(source).name, seed)
    wall = time.perf_counter()
    with deterministic(threads):
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=observation.shape[2], desc=f"reconstruct {Path(source).name}", unit="slice")
        run = run_reconstruction(mapped, net, resolved.schedule, method=method, steps=steps, guidance=guidance,
                                 batch_size=batch_size, prediction=resolved.prediction, base_seed=base_seed,
                                 start=start, guess=resolved.guess,
                                 progress=(lambda n: bar.update(n)) if bar is not None else None)
        if bar is not None:
            bar.close()
    volume = intensity_map.restore(run.volume)
    meta = {"filename_or_obj": source, "modality": modality}
    if observation.nifti_header is not None:  # the output file keeps the source's header (codes, units)
        meta["nifti_header"] = observation.nifti_header
    result_volume = make_meta_tensor(volume.numpy(), observation.affine.numpy(), meta)

    report: dict[str, Any] = {
        "input": {"source": source, "shape": list(observation.shape), "kind": observation.kind,
                  "params": observation.params},
        "settings": {"method": method, "steps": steps, "guidance": guidance, "batch_size": batch_size,
                     "seed": seed, "start": start, "start_seed": base_seed, "model": resolved.reference.get("name"),
                     "guess": resolved.guess if uses_tv(resolved.guess, observation.kind) else "adjoint",
                     "model_sha256": resolved.reference.get("sha256"), "schedule": resolved.schedule.config,
                     "device": device, "versions": _versions(), "intensity_scale": run.scale,
                     "intensity_map": intensity_map.as_report(),
                     "sigma_start": run.sigmas[0] if run.sigmas else None,
                     "grid": ("karras from the noise level of the image" if is_denoising(observation)
                              else f"{default_grid(observation, resolved.schedule, steps, resolved.guess)[0]} "
                                   "from sigma_start"),
                     "start_used": ("the noisy image, at its own noise level (start and spacing do not apply)"
                                    if is_denoising(observation) else start)},
        "data_consistency": {"relative_residual": _relative_residual(observation, volume),
                             "what": "||A x - y|| / ||y|| over the measured samples"},
    }
    cond = observation.descriptor.to(torch.float32)
    lipschitz = _lipschitz(resolved.net, resolved.prediction, resolved.schedule, steps, cond,
                           tuple(observation.shape[:2]), empirical=checks != "none", sigmas=run.sigmas or None)
    report["lipschitz"] = lipschitz
    report["bounds"] = _bounds(lipschitz["bound"], resolved.schedule, steps, run.sigmas or None)

    # a 3D network reconstructs the volume as a whole, so only a whole rerun reproduces its slices
    mode = "full" if getattr(resolved.net, "whole_volume", False) else checks
    check = _check_slices(run.evaluated_slices, batch_size, mode) if checks != "none" else []
    reproducibility: dict[str, Any] = {"output_sha256": _sha256(volume), "check_slices": check}
    if check:
        with deterministic(threads):
            again = run_reconstruction(mapped, net, resolved.schedule, method=method, steps=steps,
                                       guidance=guidance, batch_size=batch_size, prediction=resolved.prediction, base_seed=base_seed,
                                       start=start, guess=resolved.guess, slices=range(check[0], check[-1] + 1))
            first = volume[:, :, check[0]:check[-1] + 1]
            second = intensity_map.restore(again.volume)[:, :, check[0]:check[-1] + 1]
            reproducibility.update({"run1_sha256": _sha256(first), "run2_sha256": _sha256(second),
                                    "identical": bool(torch.equal(first, second))})
            trip = roundtrip(first.contiguous(), resolved, method="exact", steps=steps, batch_size=batch_size,
                             threads=threads)
            reproducibility["roundtrip"] = {k: trip[k] for k in ("bit_identical", "max_abs_error", "nfe", "seconds")}
            report["bounds"]["measured_sensitivity"] = _measured_sensitivity(
                mapped, net, resolved.schedule, method, steps, guidance, batch_size, base_seed, check, run.volume,
                prediction=resolved.prediction, start=start, guess=resolved.guess)
    report["reproducibility"] = reproducibility
    report["validation"] = _validation(mapped, net, resolved, method, steps, guidance, batch_size, base_seed,
                                       start, check, threads)

    latent = None
    if return_latent:
        with deterministic(threads):
            # the network's own image: for a signed volume the mapped one (`medinvert.signed`)
            network_volume = (result_volume if intensity_map.identity
                              else make_meta_tensor(run.volume.numpy(), observation.affine.numpy(), meta))
            latent = invert(network_volume, resolved, method="exact", steps=steps, condition=mapped,
                            batch_size=batch_size, threads=threads)

    if ref_t is not None:
        report["metrics"] = _reference_metrics(volume, corrupted_image(observation, intensity_map), ref_t)
    seconds = time.perf_counter() - wall
    report["timing"] = {"seconds": seconds, "reconstruction_seconds": run.seconds, "nfe": run.nfe,
                        "slices": observation.shape[2], "evaluated_slices": len(run.evaluated_slices),
                        "slices_per_second": len(run.evaluated_slices) / run.seconds if run.seconds > 0 else None,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    return ReconstructionResult(result_volume, latent, report, observation)


def _reference_volume(reference: Any, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """``reference`` (path, MetaTensor, tensor, array or None) as a float32 ``(X, Y, Z)`` tensor of the
    observation's ``shape``; raises `MedinvertError` (naming a file reference) for another shape."""
    from medinvert.io import load_volume
    from medinvert.transforms.base import as_volume

    if reference is None:
        return None
    path = reference if isinstance(reference, (str, Path)) else None
    data = as_volume(load_volume(path) if path is not None else reference).data
    if tuple(data.shape) != tuple(shape):
        raise MedinvertError(f"reference shape {tuple(data.shape)} differs from the volume's {tuple(shape)}", path)
    return data


def _reference_metrics(volume: torch.Tensor, zero_filled: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """The report's ``metrics`` section: output and zero-filled input against ``reference`` (all
    ``(X, Y, Z)``), fastMRI conventions; SSIM None for slices under the 7x7 window, and no numbers
    (with the reason) for a reference without a positive voxel (its maximum is the data range)."""
    from medinvert.metrics import default_data_range, nmse, per_slice_metrics, psnr, ssim, ssim_defined

    if bool(torch.isfinite(reference).all()) and not default_data_range(reference) > 0:
        return {"psnr": None, "ssim": None, "nmse": None,
                "reason": "the reference has no positive voxel (and, if signed, no spread), so its data range and "
                          "PSNR / SSIM / NMSE are undefined"}
    has_ssim = ssim_defined(tuple(reference.shape))
    return {
        "psnr": psnr(volume, reference), "ssim": ssim(volume, reference) if has_ssim else None,
        "nmse": nmse(volume, reference),
        "zero_filled": {"psnr": psnr(zero_filled, reference),
                        "ssim": ssim(zero_filled, reference) if has_ssim else None, "nmse": nmse(zero_filled, reference)},
        "per_slice": per_slice_metrics(volume, reference),
        "conventions": "fastMRI: data range = reference volume max (max - min for a signed reference); SSIM = "
                       "mean of 2-D slice SSIMs (7x7)",
    }


def _validation(observation: Observation, net: torch.nn.Module, resolved: Any, method: str, steps: int,
                guidance: float, batch_size: int, base_seed: int, start: str, check: list[int],
                threads: int | None) -> dict[str, Any]:
    """The report's ``validation`` section: withheld-line cross-validation on the check slices
    (`medinvert.kspace_validation`), with the sampler and settings of the reconstruction itself."""
    from medinvert.determinism import deterministic
    from medinvert.kspace_validation import kspace_validation

    if not check:
        return {"applicable": False, "reason": "no check slices (checks disabled, or no slice was measured)"}

    def reconstruct(thinned: Observation, slices: Any) -> torch.Tensor:
        return run_reconstruction(thinned, net, resolved.schedule, method=method, steps=steps, guidance=guidance,
                                  batch_size=batch_size, prediction=resolved.prediction, base_seed=base_seed,
                                  slices=list(slices), start=start, guess=resolved.guess).volume

    try:
        with deterministic(threads):
            return kspace_validation(observation, reconstruct, check, seed=base_seed)
    except MedinvertError as exc:  # the output is already made: a failed check is reported, not fatal
        return {"applicable": False, "reason": f"the rerun without the withheld lines failed: {exc}"}


def _measured_sensitivity(observation: Observation, net: torch.nn.Module, schedule: Any, method: str, steps: int,
                          guidance: float, batch_size: int, base_seed: int, check: list[int],
                          volume: torch.Tensor, relative: float = 1e-3, prediction: str = "eps",
                          start: str = "guess", guess: str = "adjoint") -> dict[str, Any]:
    """Perturb ``y`` by a seeded relative ``relative`` Gaussian, rerun the check slices, report ratios."""
    generator = torch.Generator().manual_seed(base_seed)
    y = observation.y
    noise = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    if y.is_complex():
        noise = torch.complex(noise, torch.randn(y.shape, generator=generator, dtype=torch.float64))
    noise = noise.to(y.dtype) * (y != 0)
    sub = slice(check[0], check[-1] + 1)
    size = float(torch.linalg.vector_norm(y[sub])) / max(1.0, float(torch.linalg.vector_norm(noise[sub])))
    delta = noise * relative * size
    moved = run_reconstruction(observation, net, schedule, method=method, steps=steps, guidance=guidance,
                               batch_size=batch_size, prediction=prediction, base_seed=base_seed, slices=range(check[0], check[-1] + 1),
                               y_override=y + delta, start=start, guess=guess)
    dx = float(torch.linalg.vector_norm((moved.volume - volume)[:, :, sub].to(torch.float64)))
    dy = float(torch.linalg.vector_norm(delta[sub].to(torch.complex128 if delta.is_complex() else torch.float64)))
    return {"relative_perturbation": relative, "delta_y_norm": dy, "delta_x_norm": dx,
            "ratio": dx / dy if dy > 0 else None,
            "what": "||x(y + d) - x(y)|| / ||d|| on the check slices (same start noise)"}
