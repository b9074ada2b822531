"""The `draggan` command: one entry point, one subcommand per tool.

Each subcommand lives in its own module and registers itself through `COMMANDS`,
so heavy imports (torch) happen only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("daemon.cmd_generate", "generate an image from a seed and write a PNG"),
    "convert": ("daemon.cmd_models", "convert an NVIDIA .pkl (or our format) to .safetensors"),
    "info": ("daemon.cmd_models", "print the config of a model file"),
    "keys": ("daemon.cmd_keys", "make CURVE key pairs for a daemon that listens beyond loopback"),
    "heads": ("daemon.cmd_heads", "render procedural cartoon heads with landmarks (dataset or preview grid)"),
    "train": ("daemon.cmd_train", "train a StyleGAN2 generator on an image folder or procedural heads"),
    "bench": ("daemon.cmd_bench", "run a benchmark (quality: landmark drags, the paper's Table 1)"),
    "train-landmarks": ("daemon.cmd_train_landmarks", "train the landmark detector of bench quality"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="draggan", description="krita-draggan tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        attr = name.replace("-", "_")  # "train-landmarks" -> add_train_landmarks_arguments
        getattr(mod, f"add_{attr}_arguments")(p)
        p.set_defaults(_run=getattr(mod, f"run_{attr}"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
