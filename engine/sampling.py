"""Feature sampling at image-pixel positions, and the pixel offset sets Ω1 (disc) and Ω2 (window).

Convention: a point is (x, y) in pixels of the model's image, x = column, y = row, pixel (i, j)
has its centre at x = i, y = j. The reference upsamples the whole feature map to image size
(F.interpolate, bilinear, align_corners=False) and indexes it at integer pixels. That value
equals bilinear sampling of the small map at feature coordinate (x + 0.5) * fw / W - 0.5, which
is what grid_sample(align_corners=False, padding_mode="border") does for the normalised
coordinate (2x + 1) / W - 1. Border padding reproduces interpolate's clamping at the edges, so
no full-resolution copy of the map is ever made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_to_grid(xy: torch.Tensor, image_size: int) -> torch.Tensor:
    """Image-pixel (x, y) -> grid_sample's normalised coordinates (align_corners=False)."""
    return (2.0 * xy + 1.0) / image_size - 1.0


def sample_features(features: torch.Tensor, xy: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear feature values at image-pixel positions.

    features: [1, C, fh, fw]; xy: [..., 2] (x, y) in pixels of an image_size² image.
    Returns [C, ...] in float32 (positions outside the image read the border value). The cast
    of float32 features is free; the drag step casts autocast's half-precision map once itself.

    The channels are sampled as a batch of C one-channel maps sharing one (expanded, not copied)
    grid: grid_sample runs a thread per output position and loops over channels inside it, so a
    drag's few hundred positions on one 256-channel map left most of the GPU idle (~50 µs per
    call, ~120 µs for the backward on an H100); C × positions threads fill it. Same values.
    """
    lead = xy.shape[:-1]
    channels, fh, fw = features.shape[1:]
    grid = pixel_to_grid(xy.reshape(1, 1, -1, 2).to(torch.float32), image_size)
    out = F.grid_sample(
        features.to(torch.float32).reshape(channels, 1, fh, fw),
        grid.expand(channels, 1, grid.shape[2], 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out.reshape(channels, *lead)


def disc_offsets(radius: float, device: torch.device | None = None) -> torch.Tensor:
    """Integer (dx, dy) with ‖(dx, dy)‖ < radius, row-major: Ω1 around an integer pixel. [K, 2] float32."""
    half = math.ceil(radius)
    d = torch.arange(-half, half + 1, dtype=torch.float32)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    keep = offsets.square().sum(dim=1) < radius * radius
    return offsets[keep].to(device)


def window_offsets(half_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Integer (dx, dy) with |dx|, |dy| <= half_size, row-major: Ω2 before clipping. [K, 2] float32."""
    d = torch.arange(-half_size, half_size + 1, dtype=torch.float32)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1).to(device)


def inside_image(xy: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bool [...]: position lies within [0, image_size - 1] on both axes."""
    return ((xy >= 0) & (xy <= image_size - 1)).all(dim=-1)
