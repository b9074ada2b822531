"""`draggan train-landmarks`: train the heads landmark detector that `draggan bench quality` uses.

torch is imported in run_train_landmarks only, so `draggan --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "landmarks-heads.safetensors"


def add_train_landmarks_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="detector file to write (.safetensors, fp16)"
    )
    p.add_argument(
        "--images", type=int, default=20000, help="training renders (rendered once, kept in memory)"
    )
    p.add_argument(
        "--minutes", type=float, default=15.0, help="training time budget (rendering not included)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (whichever ends first)"
    )
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak step size (cosine decay)")
    p.add_argument("--width", type=int, default=24, help="channels of the first stage (24: ~0.85 M params)")
    p.add_argument("--eval-images", type=int, default=500, help="held-out renders at 256 px for the report")
    p.add_argument("--workers", type=int, default=None, help="render processes [default: all cores]")
    p.add_argument("--seed", type=int, default=0, help="init and augmentation seed")
    p.add_argument("--data-seed", type=int, default=1000, help="heads dataset seed of the training renders")
    p.add_argument("--eval-seed", type=int, default=2000, help="heads dataset seed of the held-out renders")
    p.add_argument("--json", type=Path, default=None, help="also write the held-out errors here")


def run_train_landmarks(args: argparse.Namespace) -> int:
    import torch

    from engine.latent import resolve_device
    from stylegan2.landmarks import save_detector
    from stylegan2.training.landmarks_train import LandmarkTrainConfig, train_landmark_detector

    cfg = LandmarkTrainConfig(
        images=args.images,
        eval_images=args.eval_images,
        width=args.width,
        batch=args.batch,
        lr=args.lr,
        minutes=args.minutes,
        steps=args.steps,
        data_seed=args.data_seed,
        eval_seed=args.eval_seed,
        seed=args.seed,
        workers=args.workers or max(1, os.cpu_count() or 1),
    )
    try:
        cfg.validate()
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"draggan train-landmarks: {e}", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = train_landmark_detector(cfg, device, log=lambda s: print(s, flush=True))
    command = "draggan train-landmarks " + shlex.join(_argv(args))
    extra = {
        "trained_on": "stylegan2.heads renders (exact labels), augmented",
        "command": command,
        "device": str(device),
        "steps": result.steps,
        "train_minutes": round(result.seconds / 60, 2),
        "config": {k: v for k, v in vars(cfg).items()},
        "held_out": result.eval,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_detector(result.model, args.out, extra=extra)
    print(format_eval(result.eval))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.json:
        args.json.write_text(json.dumps(extra, indent=2) + "\n")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """Every option of this run, explicitly: the command that reproduces it."""
    out = []
    for key, value in sorted(vars(args).items()):
        if key.startswith("_") or key == "command" or value is None:
            continue
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def format_eval(ev: dict) -> str:
    """Held-out errors as a markdown table (pixels of the held-out renders)."""
    lines = [
        f"held-out error on {ev['images']} renders at {ev['size']} px (visible landmarks): "
        f"mean {ev['mean_px']:.2f} px, median {ev['median_px']:.2f}, p95 {ev['p95_px']:.2f}; "
        f"blurred+JPEG copies: mean {ev['degraded_mean_px']:.2f} px; "
        f"visibility accuracy {100 * ev['visibility_accuracy']:.1f}%",
        "",
        "| landmark | mean px |",
        "|---|---|",
    ]
    lines += [f"| {name} | {err:.2f} |" for name, err in ev["per_landmark_px"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m daemon.cmd_train_landmarks`) for a GPU box without the daemon's extras."""
    parser = argparse.ArgumentParser(prog="draggan train-landmarks", description=__doc__)
    add_train_landmarks_arguments(parser)
    return run_train_landmarks(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
