"""The daemon's model registry: which generators it can serve, loaded lazily on the compute thread.

Model info (resolution, latent shape) comes from the file's metadata without loading weights,
so `hello` and `list_models` answer at once. Weights load on first use or on `load_model`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("draggan.daemon")

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "heads-256.safetensors"
FALLBACK_NAME = "random-256"
FALLBACK_PRESET = "demo-256"
RANDOM_SOURCE = "built-in random weights"


class ModelError(ValueError):
    """A model that cannot be registered or loaded, with the reason."""


class UnknownModel(LookupError):
    """No model of that name is registered."""


@dataclass
class ModelEntry:
    name: str
    source: str  # file path, or RANDOM_SOURCE
    path: Path | None = None
    preset: str | None = None  # random-weight preset name
    resolution: int | None = None
    num_ws: int | None = None
    w_dim: int | None = None
    generator: Any = None  # the loaded torch module (compute thread only)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "num_ws": self.num_ws,
            "w_dim": self.w_dim,
            "loaded": self.generator is not None,
            "source": self.path.name if self.path is not None else self.source,
        }

    def latent_shape(self) -> tuple[int, int] | None:
        return (self.num_ws, self.w_dim) if self.num_ws and self.w_dim else None


def _num_ws(resolution: int) -> int:
    """StyleGAN2: two ws per block (one for 4x4) plus the last toRGB."""
    return 2 * int(math.log2(resolution)) - 2


def _file_loader() -> Any:
    """stylegan2.loading.load_model (any supported format) when present, else safetensors only."""
    try:
        from stylegan2.loading import load_model
    except ImportError:
        from stylegan2.model_file import load_generator as load_model
    return load_model


class ModelRegistry:
    """Ordered models by name; the first is the default. `get` loads (call it on the compute thread)."""

    def __init__(self, device: Any):
        self.device = device
        self._entries: dict[str, ModelEntry] = {}
        self._load_lock = threading.Lock()

    # ----- registration (startup) ------------------------------------------------------------
    @classmethod
    def from_specs(cls, specs: list[str] | None, device: Any) -> ModelRegistry:
        """`--model` values (paths or random:PRESET); none = the bundled model, else random-256."""
        reg = cls(device)
        if specs:
            for spec in specs:
                reg.add(spec)
        elif BUNDLED_MODEL.is_file():
            reg.add(str(BUNDLED_MODEL))
        else:
            log.warning(
                "bundled model %s not found: serving %r, a deterministic RANDOM-weight %s generator whose "
                "images are noise-like patterns. Pass --model FILE for a real model.",
                BUNDLED_MODEL,
                FALLBACK_NAME,
                FALLBACK_PRESET,
            )
            reg._add_random(FALLBACK_PRESET, FALLBACK_NAME)
        return reg

    def add(self, spec: str) -> ModelEntry:
        if spec.startswith("random:"):
            preset = spec.split(":", 1)[1]
            return self._add_random(preset, f"random-{preset}")
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        entry = ModelEntry(name=self._unique_name(path.stem), source=str(path), path=path)
        if path.suffix == ".safetensors":
            from stylegan2.model_file import ModelFileError, read_metadata

            try:
                config = read_metadata(path)["config"]
                entry.resolution = int(config["img_resolution"])
                entry.w_dim = int(config["w_dim"])
                entry.num_ws = _num_ws(entry.resolution)
            except (ModelFileError, KeyError, TypeError, ValueError) as e:
                raise ModelError(f"{path}: unusable model file ({e})") from None
        self._entries[entry.name] = entry
        return entry

    def _add_random(self, preset: str, name: str) -> ModelEntry:
        from stylegan2.presets import PRESETS

        if preset not in PRESETS:
            raise ModelError(f"unknown random preset {preset!r}; choose from {sorted(PRESETS)}")
        config = PRESETS[preset]
        res = int(config["img_resolution"])
        entry = ModelEntry(
            name=self._unique_name(name),
            source=RANDOM_SOURCE,
            preset=preset,
            resolution=res,
            num_ws=_num_ws(res),
            w_dim=int(config["w_dim"]),
        )
        self._entries[entry.name] = entry
        return entry

    def _unique_name(self, base: str) -> str:
        name, i = base, 2
        while name in self._entries:
            name, i = f"{base}-{i}", i + 1
        return name

    # ----- queries (any thread) --------------------------------------------------------------
    @property
    def default(self) -> str:
        return next(iter(self._entries))

    def entry(self, name: str | None) -> ModelEntry:
        key = self.default if name is None else name
        try:
            return self._entries[key]
        except KeyError:
            raise UnknownModel(f"no model named {key!r}; available: {list(self._entries)}") from None

    def infos(self) -> list[dict[str, Any]]:
        return [e.info() for e in self._entries.values()]

    # ----- loading (compute thread) ----------------------------------------------------------
    def get(self, name: str | None) -> Any:
        """The loaded generator (loads it on first use); ModelError if the file cannot be used."""
        entry = self.entry(name)
        with self._load_lock:
            if entry.generator is None:
                entry.generator = self._load(entry)
                entry.resolution = int(entry.generator.img_resolution)
                entry.num_ws = int(entry.generator.num_ws)
                entry.w_dim = int(entry.generator.w_dim)
        return entry.generator

    def _load(self, entry: ModelEntry) -> Any:
        t0 = time.perf_counter()
        if entry.preset is not None:
            from stylegan2.presets import random_generator

            G = random_generator(entry.preset).to(self.device)
        else:
            try:
                G = _file_loader()(entry.path, device=self.device)
            except ValueError as e:  # ModelFileError and the loaders' other input errors
                raise ModelError(str(e)) from None
            G = G.eval().requires_grad_(False)
        log.info("model %s loaded on %s in %.1f s", entry.name, self.device, time.perf_counter() - t0)
        return G


def device_label(device: Any) -> str:
    """'cuda:0 (NVIDIA H100 80GB HBM3)', 'mps' or 'cpu'."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def memory_info(device: Any) -> dict[str, Any]:
    """Device memory counters; cheap (no synchronisation), so the socket thread may call it."""
    import torch

    out: dict[str, Any] = {"device": str(device), "allocated": None, "reserved": None, "total": None}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        out["allocated"] = int(torch.cuda.memory_allocated(index))
        out["reserved"] = int(torch.cuda.memory_reserved(index))
        out["total"] = int(torch.cuda.get_device_properties(index).total_memory)
    elif device.type == "mps":
        out["allocated"] = int(torch.mps.current_allocated_memory())
    return out
