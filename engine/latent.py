"""Latents from seeds, rendering a latent, and device selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stylegan2 import seed_to_z

from .errors import DragInputError
from .preview import pixels

MAX_RENDER_SIZE = 8192


def generator_device(G: torch.nn.Module) -> torch.device:
    return next(G.parameters()).device


def latent_from_seed(
    G: Any, seed: int, truncation_psi: float = 0.7, device: torch.device | str | None = None
) -> torch.Tensor:
    """W+ latent [1, num_ws, w_dim] of a seed (reference RandomState convention), truncated toward w_avg."""
    if G.c_dim > 0:
        raise DragInputError(
            f"class-conditional models (c_dim = {G.c_dim}) are not supported by the drag engine"
        )
    try:
        z = seed_to_z(seed, G.z_dim)
    except (TypeError, ValueError) as e:
        raise DragInputError(str(e)) from None
    device = torch.device(device) if device is not None else generator_device(G)
    with torch.no_grad():
        return G.mapping(z.to(device), None, truncation_psi=float(truncation_psi)).detach()


def check_render_size(size: Any) -> None:
    bad_type = isinstance(size, bool) or not isinstance(size, int)
    if size is not None and (bad_type or not 1 <= size <= MAX_RENDER_SIZE):
        raise DragInputError(f"size must be an integer in [1, {MAX_RENDER_SIZE}] or None, got {size!r}")


def render_latent(G: Any, latent: Any, size: int | None = None, noise_mode: str = "const") -> np.ndarray:
    """H×W×3 uint8 image of a W+ latent ([num_ws, w_dim] or [1, num_ws, w_dim]), without gradients.

    `size` resizes to size×size on the device (bilinear, antialiased) before the one transfer.
    """
    check_render_size(size)
    device = generator_device(G)
    ws = torch.as_tensor(latent).detach().to(device=device, dtype=torch.float32)
    if ws.ndim == 2:
        ws = ws[None]
    with torch.no_grad():
        return pixels(G, ws, size, noise_mode).cpu().numpy()


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' (CUDA, else MPS, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'; ValueError if unavailable."""
    spec = str(spec).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_ok:
            raise DragInputError("device 'mps' requested but Metal (MPS) is not available in this PyTorch")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DragInputError(f"device {spec!r} requested but CUDA is not available in this PyTorch")
        if spec == "cuda":
            return torch.device("cuda")
        index = spec[5:]
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DragInputError(f"device {spec!r}: valid CUDA indices are 0..{count - 1}")
        return torch.device(spec)
    raise DragInputError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
