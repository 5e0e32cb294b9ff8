"""Denoising benchmark: where the sampler of a noisy image should start (`medinvert.engine`, step 3').

Held-out evaluation slices of ``BraTS-GLI-00002-000`` (t1n, never trained on; the slices of
`reconstruction.evaluation_slices`), Gaussian noise of std ``rel * robust_scale(clean volume)`` drawn by
`medinvert.corrupt` (seed 0).  Rows:

* ``noisy input``;
* ``TV (tuned)`` -- `skimage.restoration.denoise_tv_chambolle`, weight chosen per noise level from a
  grid on *training* slices of ``BraTS2021_00001`` (max PSNR);
* ``NLM (tuned)`` -- `skimage.restoration.denoise_nl_means` with the known sigma, ``h`` chosen the same way;
* ``per-step DC from sigma_max`` -- the sampler started at the top of the grid from the noisy image,
  with the noise-aware data-consistency weight ``sigma^2 / (sigma^2 + sigma_y^2)`` at every step (what
  `medinvert.engine` did before: it keeps pulling the estimate back towards the noisy image);
* ``one step at sigma_y`` -- a single network prediction ``x0 = D(y, sigma_y)`` (posterior-mean-like);
* ``ours ddim / exact N`` -- `run_reconstruction`: the noisy image taken as the trajectory point at
  ``sigma_y``, a karras grid of N steps from there, no per-step pull.

PSNR / SSIM with fastMRI conventions (data range = reference volume max), as in `reconstruction.py`.
Then the same levels on a real scan never seen in training (nibabel's example4d EPI, frame 0, all
slices) with the weights tuned above.  Run from the repository root (a few minutes on one core)::

    python benchmarks/denoising.py --model t1 --slices 4 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconstruction as rb  # noqa: E402  (benchmark-local module: data, slices, scores)

from medinvert.denoiser import Denoiser  # noqa: E402
from medinvert.determinism import deterministic  # noqa: E402
from medinvert.engine import DataConsistentDenoiser, noise_std, run_reconstruction  # noqa: E402
from medinvert.intensity import robust_scale  # noqa: E402
from medinvert.inversion import ResolvedNetwork, resolve_network  # noqa: E402
from medinvert.io import load_volume  # noqa: E402
from medinvert.models.slab import slab_stack  # noqa: E402
from medinvert.operators.identity import IdentityOperator  # noqa: E402
from medinvert.operators import Observation  # noqa: E402
from medinvert.solvers import get_solver  # noqa: E402
from medinvert.transforms import corrupt  # noqa: E402

LEVELS = (0.02, 0.05, 0.1)
TV_WEIGHTS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)      # in units of the normalised image (scale 1)
NLM_H = (0.4, 0.6, 0.8, 1.0, 1.2)                       # h as a multiple of sigma


def normalised_slices(observation: Observation, slices: Sequence[int]) -> tuple[torch.Tensor, float, float]:
    """``(y / s (B, 1, X, Y) float64, s, sigma_y / s)`` with ``s = robust_scale(A^H y)`` as the engine uses."""
    scale = robust_scale(observation.adjoint)
    noisy = observation.adjoint[:, :, list(slices)].permute(2, 0, 1)[:, None].to(torch.float64) / scale
    return noisy, scale, noise_std(observation) / scale


def to_volume(batch: torch.Tensor, scale: float) -> torch.Tensor:
    return (batch[:, 0] * scale).permute(1, 2, 0).to(torch.float32).contiguous()


def classical(noisy: torch.Tensor, scale: float, denoise: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply a 2-D numpy denoiser slice by slice (normalised units), back to input units ``(X, Y, n)``."""
    out = np.stack([denoise(s[0].numpy()) for s in noisy])
    return to_volume(torch.from_numpy(out)[:, None], scale)


def tv(weight: float) -> Callable[[np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_tv_chambolle

    return lambda image: denoise_tv_chambolle(image, weight=weight)


def nlm(h: float, sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_nl_means

    return lambda image: denoise_nl_means(image, h=h * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                          fast_mode=True)


def tune(level: float, threads: int) -> tuple[float, float]:
    """TV weight and NLM ``h`` maximising PSNR on the training slices at noise ``level``."""
    volume = load_volume(rb.TRAINING_FILE)
    clean = volume.as_tensor().float()
    observation = corrupt(volume, "noise", seed=0, sigma=level * robust_scale(clean))
    slices = list(rb.TUNING_SLICES)
    noisy, scale, sigma_y = normalised_slices(observation, slices)
    reference, data_range = clean[:, :, slices], float(clean.max())
    with deterministic(threads):
        best_tv = max(TV_WEIGHTS, key=lambda w: rb.score(classical(noisy, scale, tv(w)), reference, data_range)["psnr"])
        best_h = max(NLM_H, key=lambda h: rb.score(classical(noisy, scale, nlm(h, sigma_y)), reference,
                                                   data_range)["psnr"])
    return best_tv, best_h


def conditioning(resolved: ResolvedNetwork, observation: Observation, slices: Sequence[int]) -> torch.Tensor:
    """The network's conditioning images of ``slices`` (the noisy image; a 2.5D model's neighbours too)."""
    scale = robust_scale(observation.adjoint)
    images = observation.adjoint.permute(2, 0, 1) / scale                # (Z, X, Y)
    return slab_stack(images, list(slices), resolved.neighbours).to(torch.float32)


def per_step_dc(resolved: ResolvedNetwork, observation: Observation, slices: Sequence[int], steps: int) -> torch.Tensor:
    """The previous scheme: start at sigma_max from the noisy image, noise-aware DC at every step."""
    noisy, scale, sigma_y = normalised_slices(observation, slices)
    denoiser = Denoiser(resolved.net, resolved.schedule, prediction=resolved.prediction,
                        cond=observation.descriptor.float(), extra=conditioning(resolved, observation, slices))
    sampler = DataConsistentDenoiser(denoiser, IdentityOperator(), noisy, sigma_y)
    out = get_solver("ddim").generate(sampler, noisy, resolved.schedule.sigmas(steps), **get_solver("ddim").options())
    return to_volume(out.to(torch.float64), scale)


def one_step(resolved: ResolvedNetwork, observation: Observation, slices: Sequence[int]) -> torch.Tensor:
    """``x0 = y - sigma_y eps(y, sigma_y)`` in normalised units (one network evaluation)."""
    noisy, scale, sigma_y = normalised_slices(observation, slices)
    denoiser = Denoiser(resolved.net, resolved.schedule, prediction=resolved.prediction,
                        cond=observation.descriptor.float(), extra=conditioning(resolved, observation, slices))
    return to_volume(noisy - sigma_y * denoiser(noisy, sigma_y).to(torch.float64), scale)


def zero_shot(resolved: ResolvedNetwork, tuned: dict[float, tuple[float, float]], steps: int, threads: int) -> None:
    """The real nibabel EPI volume (`zero_shot.nibabel_volumes`, never seen in training), every slice,
    noise at each level: noisy, TV / NLM with the weights tuned on the training slices, ours exact."""
    import tempfile

    from zero_shot import nibabel_volumes

    print("\nZero-shot: nibabel example4d frame 0 (EPI, 128 x 96 x 24, all slices; weights tuned as above)\n")
    print("| noise (rel.) | noisy | TV | NLM | ours exact %d |" % steps)
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = next(p for name, p in nibabel_volumes(Path(tmp)).items() if "EPI" in name)
        volume = load_volume(path)
        clean = volume.as_tensor().float()
        slices = list(range(clean.shape[2]))
        for level in LEVELS:
            observation = corrupt(volume, "noise", seed=0, sigma=level * robust_scale(clean))
            noisy, scale, sigma_y = normalised_slices(observation, slices)
            weight, h = tuned[level]
            with deterministic(threads):
                rows = [to_volume(noisy, scale), classical(noisy, scale, tv(weight)),
                        classical(noisy, scale, nlm(h, sigma_y)),
                        run_reconstruction(observation, resolved.net, resolved.schedule, method="exact", steps=steps,
                                           prediction=resolved.prediction).volume]
            cells = [rb.score(image, clean, float(clean.max())) for image in rows]
            print(f"| {level} | " + " | ".join(f"{c['psnr']:.2f} / {c['ssim']:.3f}" for c in cells) + " |", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="t1")
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the real EPI volume")
    args = parser.parse_args(argv)
    rb.check_split()
    resolved = resolve_network(args.model)
    volume = load_volume(rb.HELDOUT_FILE)
    clean = volume.as_tensor().float()
    slices = rb.evaluation_slices(args.slices)
    reference, data_range = clean[:, :, slices], float(clean.max())
    print(f"model {args.model} ({resolved.reference.get('sha256', '')[:12]}), held-out slices {slices}\n")
    print("| noise (rel.) | method | PSNR (dB) | SSIM |")
    print("|---|---|---|---|")
    tuned: dict[float, tuple[float, float]] = {}
    for level in LEVELS:
        observation = corrupt(volume, "noise", seed=0, sigma=level * robust_scale(clean))
        noisy, scale, sigma_y = normalised_slices(observation, slices)
        weight, h = tuned[level] = tune(level, args.threads)
        rows: list[tuple[str, torch.Tensor]] = [("noisy input", to_volume(noisy, scale))]
        with deterministic(args.threads):
            rows.append((f"TV (tuned, weight {weight})", classical(noisy, scale, tv(weight))))
            rows.append((f"NLM (tuned, h = {h} sigma)", classical(noisy, scale, nlm(h, sigma_y))))
            rows.append(("per-step DC from sigma_max, ddim 20", per_step_dc(resolved, observation, slices, 20)))
            rows.append(("one step at sigma_y", one_step(resolved, observation, slices)))
            for steps in args.steps:
                for method in ("ddim", "exact"):
                    run = run_reconstruction(observation, resolved.net, resolved.schedule, method=method, steps=steps,
                                             prediction=resolved.prediction, slices=slices)
                    rows.append((f"ours {method} {steps} (from sigma_y)", run.volume[:, :, slices]))
        for name, image in rows:
            score = rb.score(image, reference, data_range)
            print(f"| {level} | {name} | {score['psnr']:.2f} | {score['ssim']:.4f} |", flush=True)
    if not args.no_zero_shot:
        zero_shot(resolved, tuned, max(args.steps), args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
