"""`medinvert train DATA --modality M --steps N --out CKPT [--resume]` (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a conditional noise predictor on a data folder",
                              description="Train the Lipschitz conditional UNet on the volumes of one modality "
                                          "under DATA (cases listed as held out in DATA/split.json are skipped). "
                                          "Run under `torchrun --nproc_per_node=N -m medinvert train ...` for DDP.")
    p.add_argument("data", help="folder of cases (BraTS layout, NIfTI files, DICOM series)")
    p.add_argument("--modality", required=True, choices=["t1", "t1ce", "t2", "flair", "all"],
                   help="modality to train on; 'all' pools the four (a multi-contrast base model)")
    p.add_argument("--dim", default="2d", choices=["2d", "2.5d", "3d"],
                   help="2d slices (default); 2.5d: slices that also see their neighbours' adjoint images; "
                        "3d: patches of --crop x --crop x --depth voxels (reconstruction runs it over the volume "
                        "in overlapping patches)")
    p.add_argument("--depth", type=int, default=16, help="3d: slices per training patch (default 16)")
    p.add_argument("--neighbours", type=int, default=None,
                   help="2.5d: neighbouring slices on each side (default 2)")
    p.add_argument("--steps", type=int, required=True, help="total optimisation steps")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    p.add_argument("--init", default=None, help="start from this checkpoint's (EMA) weights (fine-tuning)")
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--crop", type=int, default=96, help="training crop size (pixels)")
    p.add_argument("--extra-crops", type=int, nargs="+", default=(), metavar="SIZE",
                   help="2d / 2.5d: further crop sizes; optimisation steps cycle through --crop and these "
                        "(e.g. --crop 96 --extra-crops 48: small matrices, as in small or low-resolution scans)")
    p.add_argument("--guess", choices=("adjoint", "cs_tv"), default="adjoint",
                   help="conditioning image of k-space samples: the adjoint A^H y (default) or the CS-TV "
                        "reconstruction of the measurement (the model then refines CS-TV; medinvert.guess)")
    p.add_argument("--unrolled-weight", type=float, default=0.0,
                   help="with --guess cs_tv: add this weight times the sampler-in-the-loop loss of the k-space samples "
                        "(the final image of --unrolled-steps data-consistent sampler steps against the truth; "
                        "medinvert.train.unrolled)")
    p.add_argument("--unrolled-steps", type=int, nargs="+", default=(10,), metavar="N",
                   help="sampling steps the unrolled loss runs through; several (e.g. 5 10 20): one drawn at random "
                        "per optimisation step, so the model works at each of them")
    p.add_argument("--unrolled-method", choices=("bdia", "ddim"), default="bdia",
                   help="integrator the unrolled loss runs: bdia (the float twin of the default exact method) or ddim")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--channels", default=None,
                   help="feature channels per UNet level, comma separated (default 32,64,128)")
    p.add_argument("--blocks-per-level", type=int, default=None,
                   help="residual blocks per UNet level in the encoder and the decoder (default 1); with --init "
                        "from a shallower model the new blocks start as identities (same function, more capacity)")
    p.add_argument("--mid-blocks", type=int, default=None, help="residual blocks at the coarsest level (default 1)")
    p.add_argument("--spectral-norm", action="store_true",
                   help="spectrally normalise every convolution / linear layer (opt-in: tighter Lipschitz bound, "
                        "~2 dB lower reconstruction PSNR; docs/benchmarks.md, ablation)")
    p.add_argument("--no-spectral-norm", action="store_true", help="no spectral normalisation (the default)")
    p.add_argument("--prediction", default=None, choices=["eps", "v", "v_adjoint", "edm_adjoint"],
                   help="network output parameterisation (default edm_adjoint, see medinvert.denoiser)")
    p.add_argument("--sn-target", type=float, default=None,
                   help="per-layer spectral-norm target (default 1.0; larger = less constrained)")
    p.add_argument("--lipschitz-penalty", type=float, default=0.0, help="weight lambda of the Lipschitz hinge")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads per process")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from medinvert.train import TrainConfig, init_distributed, shutdown_distributed, train

    from medinvert.errors import MedinvertError
    from medinvert.train import DEFAULT_ARCHITECTURE

    architecture = dict(DEFAULT_ARCHITECTURE)
    if args.channels:
        try:
            architecture["channels"] = [int(c) for c in args.channels.split(",")]
        except ValueError:
            raise MedinvertError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    for key in ("blocks_per_level", "mid_blocks"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise MedinvertError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            architecture[key] = value
    if args.spectral_norm and args.no_spectral_norm:
        raise MedinvertError("give either --spectral-norm or --no-spectral-norm")
    if args.spectral_norm or args.no_spectral_norm:
        architecture["spectral_norm"] = bool(args.spectral_norm)
    if args.sn_target is not None:
        if not args.sn_target > 0:
            raise MedinvertError(f"--sn-target must be > 0, got {args.sn_target}")
        architecture["sn_target"] = float(args.sn_target)
    if args.neighbours is not None or args.dim == "2.5d":
        architecture["neighbours"] = 2 if args.neighbours is None else args.neighbours
    extra = {} if args.prediction is None else {"prediction": args.prediction}
    config = TrainConfig(architecture=architecture, data=args.data, modality=args.modality, out=args.out, steps=args.steps, dim=args.dim,
                         batch_size=args.batch_size, crop=args.crop, extra_crops=tuple(args.extra_crops), lr=args.lr,
                         lipschitz_penalty=args.lipschitz_penalty, checkpoint_every=args.checkpoint_every,
                         seed=args.seed, threads=args.threads, init=args.init, warmup=args.warmup, depth=args.depth,
                         guess=args.guess, unrolled_weight=args.unrolled_weight, unrolled_steps=tuple(args.unrolled_steps),
                         unrolled_method=args.unrolled_method,
                         **extra)
    config.validate()
    out = Path(args.out)
    if out.is_dir():
        raise MedinvertError("--out names a folder; expected a checkpoint file name (.pt)", path=out)
    if out.exists() and not args.resume:  # refused before any data is loaded
        raise MedinvertError("checkpoint exists; pass --resume to continue it or choose another --out", path=out)
    context = init_distributed(args.device)
    try:
        path = train(config, context, resume=args.resume, progress=not args.no_progress)
    finally:
        shutdown_distributed(context)
    if context.is_main:
        print(path)
    return 0
