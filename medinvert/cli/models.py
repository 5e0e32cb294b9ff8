"""`medinvert models [--json]`: the shipped models with their size and Lipschitz numbers."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="list the shipped models",
                              description="List the shipped per-modality models: path, size, parameters, "
                                          "Lipschitz bound and empirical estimate, training steps (last run and total over the lineage).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def describe_models() -> list[dict[str, object]]:
    """One record per installed shipped model (read from its checkpoint; nothing recomputed)."""
    from medinvert.models.checkpoint import model_sha256, read_checkpoint
    from medinvert.models.registry import available_models

    rows = []
    for name, path in available_models().items():
        payload = read_checkpoint(path)
        config = payload["config"]
        lipschitz = config.get("lipschitz", {})
        rows.append({
            "name": name, "modality": name, "path": str(path), "size_bytes": path.stat().st_size,
            "sha256": model_sha256(path),
            "parameters": sum(int(v.numel()) for v in payload["state_dict"].values()),
            "lipschitz_bound": lipschitz.get("bound"), "lipschitz_empirical": lipschitz.get("empirical"),
            "training_steps": int(payload.get("step", 0)),
            "training_steps_total": sum(int(run.get("completed_steps") or 0) for run in config.get("lineage", []))
                                    or int(payload.get("step", 0)),
            "lineage": [run.get("checkpoint") for run in config.get("lineage", [])],
            "prediction": config.get("prediction"), "schedule": config.get("schedule", {}).get("kind"),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = describe_models()
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    if not rows:
        print("no shipped models installed")
        return 0
    print(f"{'name':6} {'size':>8} {'params':>9} {'Lip bound':>11} {'Lip emp.':>9} {'steps':>6} {'total':>6}  path")
    for r in rows:
        print(f"{r['name']:6} {r['size_bytes'] / 2**20:7.2f}M {r['parameters']:9d} {r['lipschitz_bound']:11.4g} "
              f"{r['lipschitz_empirical']:9.4g} {r['training_steps']:6d} {r['training_steps_total']:6d}  {r['path']}")
    return 0
