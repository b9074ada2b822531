"""Point tracking: nearest-neighbour search of each handle's template in a window of the new features."""

from __future__ import annotations

import torch

from .sampling import inside_image, sample_features

CHUNK_VALUES = 4 * 2**20  # feature values sampled at once (16 MiB in float32): bounds a step's peak memory


def track_points(
    features: torch.Tensor,
    points: torch.Tensor,
    templates: torch.Tensor,
    offsets: torch.Tensor,
    image_size: int,
    metric: str = "l1",
) -> torch.Tensor:
    """p_i := argmin over Ω2(p_i) of dist(F(q), f_i), for all handles in one batched sample.

    features: [1, C, fh, fw] (no grad needed); points: [N, 2] (x, y), rounded to the nearest
    pixel for the window centre; templates: [N, C]; offsets: [K, 2] integer window offsets,
    row-major. Window pixels outside the image are excluded (the window is clipped). Ties go
    to the first pixel in row-major order, like the reference. Returns [N, 2] integer-valued
    float32 positions.
    """
    centres = torch.round(points.to(torch.float32))
    positions = centres[:, None, :] + offsets[None, :, :]  # [N, K, 2]
    # Handles in chunks: at 68 handles one [C, N, K] sample (and its difference) would add ~130 MiB
    # to the step's peak; one chunk holds ~26 handles of a 256-channel map with a 25² window.
    per_handle = features.shape[1] * offsets.shape[0]
    chunk = max(1, CHUNK_VALUES // per_handle)
    best = [
        _best_positions(features, positions[i : i + chunk], templates[i : i + chunk], image_size, metric)
        for i in range(0, positions.shape[0], chunk)
    ]
    return best[0] if len(best) == 1 else torch.cat(best)


def _best_positions(
    features: torch.Tensor, positions: torch.Tensor, templates: torch.Tensor, image_size: int, metric: str
) -> torch.Tensor:
    values = sample_features(features, positions, image_size)  # [C, n, K]
    diff = values - templates.t().to(values.dtype)[:, :, None]
    dist = diff.abs().sum(dim=0) if metric == "l1" else diff.square().sum(dim=0)  # [n, K]
    dist = torch.where(inside_image(positions, image_size), dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(dim=1)  # [n]
    return positions[torch.arange(positions.shape[0], device=positions.device), best]
