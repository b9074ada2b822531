"""Our native model format: safetensors with the generator config in the metadata.

Loading it needs no pickle at all, so a model file can never run code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


# Failures of building a generator from a damaged config: Python errors from odd values, a
# failed allocation (RuntimeError / MemoryError), absurd sizes (OverflowError), deep nesting.
CONFIG_ERRORS = (TypeError, ValueError, KeyError, RuntimeError, MemoryError, OverflowError, RecursionError)


def check_config_fits(config: Any, stored_numel: int) -> None:
    """Refuse a config that cannot match the stored weights, before building anything.

    A cheap first check (and a bound on the number of modules a meta build creates): it uses a
    lower bound of the weight count (convolutions with 1x1 kernels, square mapping layers), so
    every genuine file passes; `check_generator_fits` then compares exact names and shapes.
    """
    if not isinstance(config, dict):
        raise ModelFileError(f"the generator config is a {type(config).__name__}, not a dict")
    flat = {**(config.get("synthesis_kwargs") or {}), **config}
    mapping = config.get("mapping_kwargs") or {}
    values = {
        "img_resolution": flat.get("img_resolution"),
        "w_dim": flat.get("w_dim"),
        "channel_base": flat.get("channel_base", 32768),
        "channel_max": flat.get("channel_max", 512),
        "num_layers": mapping.get("num_layers", 8) if isinstance(mapping, dict) else None,
    }
    bad = [k for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise ModelFileError(f"the generator config has invalid {bad}")
    res, layers = values["img_resolution"], values["num_layers"]
    if not 4 <= res <= 2**16 or not 1 <= layers <= 256:
        raise ModelFileError(f"unsupported generator config (img_resolution {res}, {layers} mapping layers)")
    resolutions = [2**i for i in range(2, res.bit_length())]
    ch = {r: min(values["channel_base"] // r, values["channel_max"]) for r in resolutions}
    lower = sum(ch.get(r // 2, 0) * ch[r] + ch[r] ** 2 for r in resolutions)
    lower += values["w_dim"] ** 2 * (layers - 1)
    if lower > stored_numel:
        raise ModelFileError(
            f"the config describes a generator with at least {lower:,} weights, "
            f"but the file holds only {stored_numel:,}"
        )


def check_generator_fits(config: Any, shapes: Mapping[str, tuple[int, ...]], stored_numel: int) -> None:
    """Prove the config builds exactly the stored tensors before any memory is allocated for it.

    The generator is built on the meta device (shapes only, no memory) and its state_dict names
    and shapes are compared with the stored ones; its total size (buffers included) must not
    exceed `stored_numel`, the number of elements actually held in the file (distinct storages,
    so one stored tensor viewed many times does not count many times). Only then is it safe to
    build the real generator: its memory is bounded by the file's.
    """
    check_config_fits(config, stored_numel)
    try:
        with torch.device("meta"):
            G = Generator(**config)
    except CONFIG_ERRORS as e:
        raise ModelFileError(f"invalid generator config ({type(e).__name__}: {e})"[:500]) from None
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            "the weights do not match the generator's config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ModelFileError(f"{name} has shape {list(shapes[name])}, expected {list(shape)}")
    total = sum(t.numel() for t in (*G.parameters(), *G.buffers()))
    if total > stored_numel:
        raise ModelFileError(
            f"the config's generator has {total:,} weights, but the file holds only {stored_numel:,} "
            "(tensors that repeat stored data)"
        )


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
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        check_generator_fits(meta["config"], shapes, sum(v.numel() for v in tensors.values()))
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    try:
        G = Generator(**meta["config"])
    except CONFIG_ERRORS as e:
        raise ModelFileError(f"{path}: cannot build the generator ({type(e).__name__}: {e})"[:500]) from None
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
