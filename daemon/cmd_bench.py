"""`draggan bench BENCHMARK`: the project's benchmarks, one sub-subcommand each.

Benchmarks register in `BENCHMARKS` as name -> (module, help), like `daemon.cli.COMMANDS`: the
module defines `add_<name>_arguments(parser)` and `run_<name>(args) -> int` and imports torch
inside run_<name> only. Adding `draggan bench speed` is one more entry here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

BENCHMARKS: dict[str, tuple[str, str]] = {
    "quality": ("daemon.cmd_bench", "drag accuracy on face landmarks (the paper's Table 1 protocol)"),
    "speed": ("daemon.bench_speed", "time per drag step: the reference formulation vs our engine"),
}

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS / "heads-256.safetensors"
DEFAULT_LANDMARKS = MODELS / "landmarks-heads.safetensors"


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        attr = name.replace("-", "_")
        getattr(mod, f"add_{attr}_arguments")(q)
        q.set_defaults(_bench_run=getattr(mod, f"run_{attr}"))


def run_bench(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)


# ----- quality ------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="generator (.safetensors / .pkl / random:PRESET)"
    )
    p.add_argument("--landmarks", type=Path, default=DEFAULT_LANDMARKS, help="landmark detector file")
    p.add_argument("--pairs", type=int, default=100, help="image pairs (fixed seeds)")
    p.add_argument("--points", type=_int_list, default=[1, 5, 10], help="handle counts: subsets of 1, 5, 10")
    p.add_argument(
        "--variants",
        type=_name_list,
        default=["plain", "nearest", "l2", "mask", "batched"],
        help="plain (paper: L1 tracking), nearest (seed 004), l2 (reference tracking), mask (discs), "
        "batched (plain, stepped in one batch with 3 other drags, as the daemon does), "
        "split (plain with modconv='split'), "
        "cudagraph (plain with the CUDA-graph step; CUDA only)",
    )
    p.add_argument("--max-steps", type=int, default=200, help="step cap per edit")
    p.add_argument("--seed", type=int, default=0, help="pair k uses latent seeds SEED+2k and SEED+2k+1")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi of the sampled latents")
    p.add_argument("--lr", type=float, default=None, help="Adam step size [default: the engine's, 2e-3]")
    p.add_argument(
        "--mask-radius",
        type=float,
        default=None,
        help="disc radius (px) of the allowed region around handles and targets [default: resolution/8]",
    )
    p.add_argument(
        "--min-visibility",
        type=float,
        default=0.5,
        help="use a pair only if the detector sees all 10 landmarks in both images with at least this "
        "probability; 0 = use every pair",
    )
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--workers", type=int, default=1, help="worker processes (several share one GPU)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--json", type=Path, default=None, help="write all results as JSON here")


def run_quality(args: argparse.Namespace) -> int:
    from .bench_quality import BenchError, QualityConfig, run_quality_bench

    try:
        cfg = QualityConfig(
            model=str(args.model),
            landmarks=str(args.landmarks),
            pairs=args.pairs,
            points=tuple(args.points),
            variants=tuple(args.variants),
            max_steps=args.max_steps,
            seed=args.seed,
            psi=args.psi,
            lr=args.lr,
            mask_radius=args.mask_radius,
            min_visibility=args.min_visibility,
            device=args.device,
            workers=args.workers,
        )
        cfg.validate()
        report = run_quality_bench(cfg, log=lambda s: print(s, flush=True))
    except BenchError as e:
        print(f"draggan bench quality: {e}", file=sys.stderr)
        return 2
    print(report.markdown)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.markdown + "\n")
        print(f"wrote {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.json_text + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry, `python -m daemon.cmd_bench quality ...`, for a box without the daemon's extras."""
    parser = argparse.ArgumentParser(prog="draggan bench", description=__doc__)
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
