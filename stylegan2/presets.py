"""Named generator configurations (NVIDIA's usual settings and our demo model)."""

from __future__ import annotations

from typing import Any

import torch

from .networks import Generator

PRESETS: dict[str, dict[str, Any]] = {
    # Our bundled demo model (procedural heads): b128 is the 6th block with 128 channels.
    "demo-256": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        channel_base=16384,
        channel_max=256,
    ),
    # NVIDIA's configurations of the model-zoo sizes.
    "stylegan2-256": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        channel_base=16384,
        channel_max=512,
    ),
    "stylegan2-256-wide": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        channel_base=32768,
        channel_max=512,
    ),
    "stylegan2-512": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=512,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        channel_base=32768,
        channel_max=512,
    ),
    "stylegan2-1024": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=1024,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        channel_base=32768,
        channel_max=512,
    ),
    # Smoke tests and CPU benchmark runs: 256 px so b128 is the 6th block, channels tiny.
    "tiny-256": dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        channel_base=1024,
        channel_max=32,
    ),
}


def random_generator(preset: str = "demo-256", seed: int = 0) -> Generator:
    """A deterministic random-weight generator: for speed benchmarks and for trying the tools
    before a trained model exists. Its images are noise-like patterns, not pictures."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        G = Generator(**PRESETS[preset])
    return G.eval().requires_grad_(False)
