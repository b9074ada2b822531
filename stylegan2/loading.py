"""One entry point for model files: detect the format from the bytes, load or describe.

The file name never decides anything (NVIDIA's renderer picks classes from substrings of the
name; a renamed file must behave the same): our safetensors files are recognised by their
header, pickles by their opcodes, and TensorFlow-era pickles by the class they reference.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from .model_file import ModelFileError, load_generator, read_metadata
from .networks import Generator
from .nvidia_pickle import load_network_pickle, read_and_build

SAFETENSORS = "safetensors"
PICKLE = "pickle"

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# How protocol 0/1 pickles of containers or objects start (protocol 2+ starts with PROTO, b"\x80").
_OLD_PICKLE_FIRST_BYTES = frozenset(b"(}])c")


def detect_format(path: str | Path) -> str:
    """'safetensors' or 'pickle', from the file's first bytes; ModelFileError for anything else."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a model file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from e
    if not head:
        raise ModelFileError(f"{path}: empty file")
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(size - 8, _MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
            return SAFETENSORS
    if (head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5) or head[0] in _OLD_PICKLE_FIRST_BYTES:
        return PICKLE
    if head.startswith(b"PK\x03\x04"):
        raise ModelFileError(
            f"{path}: a zip archive (e.g. a torch.save checkpoint), not a model file we can read; "
            "use an NVIDIA StyleGAN2 network pickle or a .safetensors file made by `draggan convert`"
        )
    raise ModelFileError(
        f"{path}: not a model file we recognise (neither an NVIDIA StyleGAN2 network pickle "
        "nor a krita-draggan .safetensors file)"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The generator in `path`, in eval mode on `device`. Never runs code from the file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if detect_format(path) == SAFETENSORS:
        return _load_safetensors(path, device)
    return load_network_pickle(path, device=device)


def _load_safetensors(path: Path, device: str | torch.device = "cpu") -> Generator:
    """model_file.load_generator, which proves the config matches the stored tensors first."""
    return load_generator(path, device=device)


def describe_model(path: str | Path) -> dict[str, Any]:
    """Format, stored dtype and generator config of a model file (for `draggan info`)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    fmt = detect_format(path)
    info: dict[str, Any] = {"path": str(path), "file_size": path.stat().st_size}
    if fmt == SAFETENSORS:
        meta = read_metadata(path)
        G = _load_safetensors(path)
        info.update(
            format="krita-draggan safetensors",
            format_detail=f"format version {meta['format_version']}",
            dtype=", ".join(_safetensors_dtypes(path)),
            extra=meta["extra"],
        )
    else:
        net, G = read_and_build(path)
        info.update(
            format="NVIDIA network pickle",
            format_detail=(
                f"pickle protocol {net.protocol}; entries {', '.join(map(str, net.entries))}; "
                f"using {net.generator_key}"
            ),
            dtype=", ".join(net.stored_dtypes()),
        )
    info.update(generator_summary(G))
    return info


def generator_summary(G: Generator) -> dict[str, Any]:
    """The effective architecture settings of a built generator."""
    syn = G.synthesis
    first = getattr(syn, syn.block_names()[0])
    return {
        "resolution": G.img_resolution,
        "img_channels": G.img_channels,
        "z_dim": G.z_dim,
        "w_dim": G.w_dim,
        "c_dim": G.c_dim,
        "num_ws": G.num_ws,
        "mapping_layers": G.mapping.num_layers,
        "architecture": first.architecture,
        "channel_base": G.init_kwargs.get("channel_base", 32768),
        "channel_max": G.init_kwargs.get("channel_max", 512),
        "channels": {int(name[1:]): getattr(syn, name).conv1.out_channels for name in syn.block_names()},
        "num_fp16_res": syn.num_fp16_res,
        "conv_clamp": first.conv1.conv_clamp,
        "parameters": sum(p.numel() for p in G.parameters()),
        "config": json.loads(json.dumps(G.init_kwargs)),
    }


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors header (dtype, shape), read without the weights."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(size, _MAX_SAFETENSORS_HEADER)))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        for v in entries.values():
            if not (isinstance(v["dtype"], str) and all(isinstance(n, int) and n >= 0 for n in v["shape"])):
                raise ValueError("bad tensor entry")
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ModelFileError(f"{path}: damaged safetensors header ({e})") from None
    return entries


def _safetensors_dtypes(path: Path) -> list[str]:
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    return sorted({names.get(v["dtype"], v["dtype"].lower()) for v in _safetensors_header(path).values()})
