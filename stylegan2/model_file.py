"""Our native model format: safetensors with the generator config in the metadata.

Loading it needs no pickle at all, so a model file can never run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .networks import Generator

FORMAT_NAME = "krita-draggan/stylegan2-generator"
FORMAT_VERSION = "1"


class ModelFileError(ValueError):
    """A model file that cannot be used, with a message saying why."""


def save_generator(
    G: Generator, path: str | Path, dtype: torch.dtype = torch.float32, extra: dict[str, Any] | None = None
) -> None:
    """Write G's state_dict (cast to `dtype`) and its init kwargs. `extra` goes into the metadata."""
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in G.state_dict().items()
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(G.init_kwargs, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    save_file(tensors, str(path), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The config and extra info of a model file, without loading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: safetensors file without krita-draggan generator metadata "
            f"(format={meta.get('format')!r}); convert models with `draggan convert`"
        )
    try:
        return {
            "format_version": meta.get("format_version"),
            "config": json.loads(meta["config"]),
            "extra": json.loads(meta.get("extra", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: damaged metadata ({e})") from e


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Build the generator from the metadata config and load the weights (as fp32)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: truncated or corrupt weights ({e})") from e
    try:
        G = Generator(**meta["config"])
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: invalid generator config ({e})") from e
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        missing, unexpected = G.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise ModelFileError(f"{path}: weights do not match the config ({e})"[:500]) from None
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    return G.eval().requires_grad_(False).to(device)
