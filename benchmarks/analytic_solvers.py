"""Every solver against the closed-form probability-flow ODE of Gaussian data (docs/methods.md tables).

Data: ``x0 ~ N(mu, s^2)`` per pixel on 16 x 16 images, ``mu ~ 0.5 N(0, 1)`` and ``s`` uniform in
``[0.1, 1]`` (sharp pixels included), driven through the same `Denoiser` path as a trained model
(`medinvert.analytic.AnalyticNet`, float64).  For each schedule and step count it prints, per method:

- ``gen``: max abs error of generation from fresh noise against the exact flow ``xbar(0)``;
- ``latent``: max abs error of the inverted latent against the exact inverse flow, in noise units
  (divided by ``sigma_max``);
- ``rt64`` / ``rt32``: round-trip max abs error ``|generate(invert(x0)) - x0|`` with a float64 /
  float32 state;
- NFE of inversion / generation from the inverted state.

A second table gives the observed convergence order (log2 of successive error ratios) on the
smooth grid ``sigma_i = sigma_max (1 - i/n)^3``.  Not a timed benchmark.  Run from the repository
root::

    python benchmarks/analytic_solvers.py [--steps 10 20 50] [--schedules linear scaled_linear cosine]
"""

from __future__ import annotations

import argparse
import math

import torch

from medinvert.analytic import AnalyticNet, GaussianData
from medinvert.denoiser import Denoiser
from medinvert.schedule import make_schedule
from medinvert.solvers import SOLVERS, BdiaState, EdictState, FixedPointState

METHODS: list[tuple[str, str, dict]] = [
    ("ddim", "ddim", {}),
    ("edict (p=0.93)", "edict", {}),
    ("bdia (gamma=1)", "bdia", {}),
    ("exact bdia (x)", "exact", {"scheme": "bdia"}),
    ("exact leapfrog (xbar)", "exact", {"scheme": "leapfrog"}),
    ("exact heun (xbar)", "exact", {"scheme": "heun"}),
    ("ode dopri5", "ode", {}),
]


def _latent_xbar(state, sigma_max: float) -> torch.Tensor:
    if isinstance(state, FixedPointState):
        return state.xbar()
    if isinstance(state, (EdictState, BdiaState)):
        return state.x.double() * math.sqrt(1 + sigma_max**2)
    return state.double()


def _data(seed: int = 0) -> GaussianData:
    gen = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(1, 16, 16, generator=gen, dtype=torch.float64)
    s = 0.1 + 0.9 * torch.rand(1, 16, 16, generator=gen, dtype=torch.float64)
    return GaussianData(mu, s)


def _fmt(value: float) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.1e}"


def accuracy_table(kind: str, steps_list: list[int]) -> list[str]:
    """Markdown rows: method | steps | gen | latent | rt64 | rt32 | NFE inv/gen."""
    data = _data()
    schedule = make_schedule(kind)
    den = Denoiser(AnalyticNet(data, schedule), schedule)
    x0 = data.sample((4, 1, 16, 16), torch.Generator().manual_seed(1))
    rows = [f"**{kind}** (sigma_max = {schedule.sigma_max:.4g}), trailing spacing", "",
            "| method | steps | gen error | latent error / sigma_max | round trip f64 | round trip f32 | NFE invert / generate |",
            "|---|---|---|---|---|---|---|"]
    for label, name, options in METHODS:
        spec = SOLVERS[name]
        for n in steps_list:
            sig = schedule.sigmas(n)
            smax = float(sig[0])
            noise = smax * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            with torch.no_grad():
                gen = spec.generate(den, noise, sig, **options)
                gen_err = float((gen - data.flow(noise, smax, 0.0)).abs().max())
                den.reset_counters()
                state = spec.invert(den, x0, sig, **options)
                nfe_inv = den.nfe
                den.reset_counters()
                back = spec.generate(den, state, sig, **options)
                nfe_gen = den.nfe
                lat_err = float((_latent_xbar(state, smax) - data.flow(x0, 0.0, smax)).abs().max()) / smax
                rt64 = float((back - x0).abs().max())
                x32 = x0.float()
                back32 = spec.generate(den, spec.invert(den, x32, sig, **options), sig, **options)
                rt32 = float((back32.double() - x32.double()).abs().max())
            rows.append(f"| {label} | {n} | {_fmt(gen_err)} | {_fmt(lat_err)} | {_fmt(rt64)} | {_fmt(rt32)} | {nfe_inv} / {nfe_gen} |")
    return rows


def order_table(kinds: list[str], steps_list: tuple[int, ...] = (50, 100, 200)) -> list[str]:
    """Markdown rows: observed convergence orders of generation on the smooth grid (1 - i/n)^3."""
    header = "| method | " + " | ".join(f"{k}: errors at n = {', '.join(map(str, steps_list))} -> order" for k in kinds) + " |"
    rows = [header, "|---|" + "---|" * len(kinds)]
    data = _data()
    for label, name, options in METHODS[:-1] + [("ode rk4 (fixed grid)", "ode", {"ode_method": "rk4"})]:
        cells = []
        for kind in kinds:
            schedule = make_schedule(kind)
            den = Denoiser(AnalyticNet(data, schedule), schedule)
            errors = []
            for n in steps_list:
                i = torch.arange(n + 1, dtype=torch.float64)
                sig = schedule.sigma_max * (1 - i / n) ** 3
                sig[-1] = 0.0
                noise = schedule.sigma_max * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
                out = SOLVERS[name].generate(den, noise, sig, **options)
                errors.append(float((out - data.flow(noise, schedule.sigma_max, 0.0)).abs().max()))
            order = math.log2(errors[-2] / errors[-1]) if all(math.isfinite(e) and e > 0 for e in errors[-2:]) else float("nan")
            cells.append(f"{', '.join(_fmt(e) for e in errors)} -> {order:.2f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--schedules", nargs="+", default=["linear", "scaled_linear", "cosine"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for kind in args.schedules:
        print("\n".join(accuracy_table(kind, args.steps)))
        print()
    print("Observed orders, smooth grid sigma_max (1 - i/n)^3:\n")
    print("\n".join(order_table(args.schedules)))


if __name__ == "__main__":
    main()
