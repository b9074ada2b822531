"""`draggan train`: train a StyleGAN2 generator (our format) on an image folder or procedural heads.

Runs as a `draggan` subcommand, or standalone as `python -m daemon.cmd_train` (on a bare GPU
box that has torch but not the daemon's other dependencies). torch is imported in run_train only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

# Options that define the training run: taken from the checkpoint when resuming.
CONFIG_OPTIONS = {
    "data": "data",
    "resolution": "resolution",
    "num_images": "num_images",
    "data_seed": "data_seed",
    "mirror": "mirror",
    "z_dim": "z_dim",
    "mapping_layers": "mapping_layers",
    "channel_base": "channel_base",
    "channel_max": "channel_max",
    "mbstd_group": "mbstd_group",
    "batch": "batch",
    "lr": "lr",
    "gamma": "gamma",
    "r1_interval": "r1_interval",
    "pl": "pl_weight",
    "style_mixing": "style_mixing",
    "ema_kimg": "ema_kimg",
    "aug": "aug_p",
    "ada": "ada",
    "ada_target": "ada_target",
    "precision": "precision",
    "seed": "seed",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default=None,
        help="image folder (PNG/JPEG), or 'heads' for procedural cartoon heads [default: heads]",
    )
    d.add_argument(
        "--resolution", type=int, default=None, help="image size in px (power of two) [default: 256]"
    )
    d.add_argument("--num-images", type=int, default=None, help="heads: how many to render [default: 50000]")
    d.add_argument("--data-seed", type=int, default=None, help="heads: which set of heads [default: 0]")
    d.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="x-flip half of the real images [default: on]",
    )
    d.add_argument("--cache-dir", type=Path, default=None, help="heads: keep the rendered set here as .npy")
    d.add_argument("--workers", type=int, default=None, help="render/load processes [default: cores - 2]")
    d.add_argument(
        "--min-ready",
        type=int,
        default=2048,
        help="heads: start training once this many are rendered (the rest stream in); 0 = all",
    )

    m = p.add_argument_group("model (fixed once a run has started)")
    m.add_argument("--z-dim", type=int, default=None, help="z and w size [default: 512]")
    m.add_argument("--mapping-layers", type=int, default=None, help="[default: 8]")
    m.add_argument("--channel-base", type=int, default=None, help="[default: 16384]")
    m.add_argument("--channel-max", type=int, default=None, help="[default: 256]")
    m.add_argument("--mbstd-group", type=int, default=None, help="minibatch-stddev group size [default: 4]")

    o = p.add_argument_group("optimisation (fixed once a run has started)")
    o.add_argument("--batch", type=int, default=None, help="[default: 32]")
    o.add_argument("--lr", type=float, default=None, help="Adam step size of G and D [default: 0.0025]")
    o.add_argument(
        "--gamma", type=float, default=None, help="R1 weight [default: ADA heuristic 0.0002*res^2/batch]"
    )
    o.add_argument("--r1-interval", type=int, default=None, help="lazy R1 every N steps [default: 16]")
    o.add_argument(
        "--pl",
        type=float,
        default=None,
        help="path-length regularisation weight, 0 = off (NVIDIA: 2) [default: 0]",
    )
    o.add_argument("--style-mixing", type=float, default=None, help="style mixing probability [default: 0.9]")
    o.add_argument("--ema-kimg", type=float, default=None, help="G_ema half-life [default: batch*10/32]")
    o.add_argument(
        "--aug",
        type=float,
        default=None,
        help="probability of x-flip + integer translation of D's inputs [default: 0]",
    )
    o.add_argument(
        "--ada",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adapt --aug with ADA's heuristic (target r_t) [default: off]",
    )
    o.add_argument("--ada-target", type=float, default=None, help="[default: 0.6]")
    o.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="auto = bf16 autocast on CUDA, fp32 on CPU [default: auto]",
    )
    o.add_argument("--seed", type=int, default=None, help="[default: 0]")

    r = p.add_argument_group("this run")
    r.add_argument(
        "--out", type=Path, default=Path("out/train"), help="checkpoints, samples, log [default: out/train]"
    )
    r.add_argument(
        "--kimg",
        type=float,
        default=1000.0,
        help="stop when the run has seen this many kimg in total [default: 1000]",
    )
    r.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget of this invocation; checkpoints and exits cleanly before it ends",
    )
    r.add_argument(
        "--finish-reserve",
        type=float,
        default=30.0,
        help="seconds of --minutes kept for the final checkpoint and export [default: 30]",
    )
    r.add_argument(
        "--resume",
        type=Path,
        nargs="+",
        default=None,
        help="checkpoint dir(s) or run dir(s); the newest checkpoint among them is used",
    )
    r.add_argument(
        "--auto-resume",
        action="store_true",
        help="start fresh instead of failing when no --resume path holds a checkpoint",
    )
    r.add_argument(
        "--portable",
        type=Path,
        default=None,
        help="also write a compact (travel-size) checkpoint to this dir at the end",
    )
    r.add_argument("--export", type=Path, default=None, help="write G_ema as .safetensors (fp16) at the end")
    r.add_argument(
        "--export-only", action="store_true", help="only export the --resume checkpoint, no training"
    )
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [default: auto]")
    r.add_argument("--ckpt-minutes", type=float, default=5.0, help="minutes between checkpoints [default: 5]")
    r.add_argument("--keep", type=int, default=2, help="checkpoints kept in OUT/checkpoints [default: 2]")
    r.add_argument(
        "--max-shard-mib", type=float, default=15.9, help="checkpoint file size cap [default: 15.9]"
    )
    r.add_argument("--sample-kimg", type=float, default=50.0, help="kimg between sample grids [default: 50]")
    r.add_argument(
        "--log-every",
        type=int,
        default=50,
        help="steps between loss logs (the only host syncs) [default: 50]",
    )
    r.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (CUDA speed option)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace):  # -> TrainConfig (torch-importing module)
    from stylegan2.training.loop import TrainConfig

    given = {
        field: getattr(args, opt) for opt, field in CONFIG_OPTIONS.items() if getattr(args, opt) is not None
    }
    if "z_dim" in given:
        given["w_dim"] = given["z_dim"]
    return TrainConfig(**given), given


def run_train(args: argparse.Namespace) -> int:
    from stylegan2.training.checkpoint import CheckpointError
    from stylegan2.training.data import DatasetError
    from stylegan2.training.loop import RunOptions, pick_checkpoint, train

    try:
        cfg, given = _config_from_args(args)
        if args.resume:
            found = pick_checkpoint(list(args.resume))
            if found is not None:
                saved = json.loads((found / "meta.json").read_text())["meta"]["config"]
                changed = [k for k, v in given.items() if saved.get(k) != v]
                if changed:
                    raise ValueError(
                        f"cannot change {', '.join(changed)} when resuming (the run was started with "
                        + ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
                        + ")"
                    )
        if args.min_ready < 0 or args.max_shard_mib < 0.01:
            raise ValueError("--min-ready must be >= 0 and --max-shard-mib >= 0.01")
        cfg.validate()
        run = RunOptions(
            out=args.out,
            kimg=args.kimg,
            minutes=args.minutes,
            finish_reserve_s=args.finish_reserve,
            device=args.device,
            resume=list(args.resume or []),
            auto_resume=args.auto_resume,
            export=args.export,
            export_only=args.export_only,
            portable=args.portable,
            ckpt_minutes=args.ckpt_minutes,
            sample_kimg=args.sample_kimg,
            keep=args.keep,
            log_every=args.log_every,
            max_shard_bytes=int(args.max_shard_mib * 1024 * 1024),
            cache_dir=args.cache_dir,
            workers=args.workers,
            min_ready=args.min_ready or None,
            channels_last=args.channels_last,
            progress=not args.no_progress,
            command=_command_line(args),
        )
        result = train(cfg, run)
    except (ValueError, CheckpointError, DatasetError) as e:
        print(f"draggan train: error: {e}", file=sys.stderr)
        return 2
    print(
        f"done: step {result.step}, {result.cur_nimg / 1000:.1f} kimg; checkpoint {result.checkpoint}"
        + (f"; portable {result.portable}" if result.portable else "")
        + (f"; exported {result.export}" if result.export else "")
    )
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, for the exported model's metadata."""
    if hasattr(args, "_argv"):
        return "draggan train " + shlex.join(args._argv)
    return "draggan " + shlex.join(sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="draggan train", description="train a StyleGAN2 generator")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    args._argv = argv
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())
