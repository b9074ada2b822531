"""`draggan convert` and `draggan info`: model files in and out of our safetensors format.

Torch is imported inside run_* only, so `draggan --help` stays fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read an NVIDIA StyleGAN2 network pickle (network-snapshot-*.pkl, DragGAN model-zoo files) "
        "or one of our .safetensors files without running any code from it, and write the "
        "generator (G_ema) as .safetensors. The input format is detected from the file's content."
    )
    p.add_argument("input", type=Path, help="NVIDIA .pkl or krita-draggan .safetensors")
    p.add_argument("output", type=Path, help="the .safetensors file to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print a model file's format, stored dtype and generator config (resolution, latent sizes, "
        "channels, parameter count). Never runs code from the file."
    )
    p.add_argument("model", type=Path, help="NVIDIA .pkl or krita-draggan .safetensors")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _fail(command: str, message: object) -> int:
    print(f"draggan {command}: error: {message}", file=sys.stderr)
    return 2


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from stylegan2.loading import detect_format, load_model
    from stylegan2.model_file import ModelFileError, load_generator, save_generator

    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and not args.force:
        return _fail("convert", f"{dst} exists (use --force to overwrite)")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        return _fail("convert", "the output would overwrite the input")
    dtype = torch.float16 if args.fp16 else torch.float32
    try:
        source_format = detect_format(src)
        G = load_model(src)
        extra = {
            "source_file": src.name,
            "source_format": source_format,
            "source_sha256": _sha256(src),
        }
        _save_atomically(dst, lambda tmp: save_generator(G, tmp, dtype=dtype, extra=extra))
        _check_round_trip(G, load_generator(dst), dtype)
    except (ModelFileError, OSError) as e:
        return _fail("convert", e)
    size_mb = dst.stat().st_size / 2**20
    print(
        f"wrote {dst} ({size_mb:.1f} MiB, {str(dtype).removeprefix('torch.')}): "
        f"{G.img_resolution}x{G.img_resolution}, {sum(p.numel() for p in G.parameters()):,} parameters"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from stylegan2.loading import describe_model
    from stylegan2.model_file import ModelFileError

    try:
        info = describe_model(args.model)
    except (ModelFileError, OSError) as e:
        return _fail("info", e)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines for `draggan info`."""
    channels = " ".join(f"{res}:{ch}" for res, ch in sorted(info["channels"].items()))
    rows = [
        ("model", info["path"]),
        ("format", f"{info['format']} ({info['format_detail']})"),
        ("dtype", info["dtype"]),
        ("resolution", f"{info['resolution']}x{info['resolution']}, {info['img_channels']} channels"),
        (
            "latents",
            f"z_dim {info['z_dim']}, w_dim {info['w_dim']}, c_dim {info['c_dim']}, num_ws {info['num_ws']}",
        ),
        ("mapping", f"{info['mapping_layers']} layers"),
        (
            "synthesis",
            f"architecture {info['architecture']}, channel_base {info['channel_base']}, "
            f"channel_max {info['channel_max']}, num_fp16_res {info['num_fp16_res']}, "
            f"conv_clamp {info['conv_clamp']}",
        ),
        ("channels", channels),
        ("parameters", f"{info['parameters']:,}"),
        ("file size", f"{info['file_size'] / 2**20:.1f} MiB"),
    ]
    if info.get("extra"):
        rows.append(("extra", json.dumps(info["extra"], sort_keys=True)))
    return "\n".join(f"{name + ':':<12}{value}" for name, value in rows)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_atomically(dst: Path, write: Any) -> None:
    """Write to a temporary file next to dst, then rename: no half-written model files."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_round_trip(G: Any, G2: Any, dtype: Any) -> None:
    """The written file must give back exactly the weights we meant to store."""
    from stylegan2.model_file import ModelFileError

    expected = G.state_dict()
    for name, value in G2.state_dict().items():
        want = (
            expected[name].to(dtype).to(value.dtype) if expected[name].is_floating_point() else expected[name]
        )
        if not bool((want == value).all()):
            raise ModelFileError(f"verification of the written file failed at {name}")
