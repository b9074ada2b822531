"""Motion supervision and the mask term, computed on the feature map at feature resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import inside_image, sample_features

ACTIVE_DISTANCE = 1.0  # handles within this many pixels of their target add no motion loss


def motion_loss(
    features: torch.Tensor,
    points: torch.Tensor,
    targets: torch.Tensor,
    disc: torch.Tensor,
    image_size: int,
    active_distance: float = ACTIVE_DISTANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i mean_{q ∈ Ω1(p_i)} |F(q).detach() − F(q + d_i)|, all handles in one batched sample.

    features: [1, C, fh, fw] with grad; points, targets: [N, 2] (x, y) image pixels (points
    integer-valued after tracking); disc: [K, 2] integer offsets of Ω1. Disc pixels outside the
    image are left out of the mean (as the reference, whose disc comes from the image grid);
    shifted samples q + d_i that fall outside read the border value. Handles within
    `active_distance` of their target contribute exactly zero (and zero gradient); the session
    passes min(1 px, stop distance), so a stop distance below 1 px is still reachable.
    `features` are used as given: callers cast them to float32 once (not once per sample).
    Returns (loss, distances [N] from each point to its target).
    """
    direction = targets - points
    distances = direction.norm(dim=1)
    active = (distances > active_distance).to(torch.float32)
    unit = direction / distances.clamp_min(1e-7)[:, None]
    q = points[:, None, :] + disc[None, :, :]  # [N, K, 2]
    valid = inside_image(q, image_size).to(torch.float32)  # [N, K]
    with torch.no_grad():
        anchor = sample_features(features.detach(), q, image_size)  # [C, N, K]
    shifted = sample_features(features, q + unit[:, None, :], image_size)  # [C, N, K], carries the gradient
    per_pixel = (anchor - shifted).abs().mean(dim=0)  # mean over channels: [N, K]
    per_handle = (per_pixel * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
    return (per_handle * active).sum(), distances


def fixed_region_weight(allowed: np.ndarray, feature_size: int, device: torch.device) -> torch.Tensor:
    """M_fixed at feature resolution: 1 − area-average of the allowed-to-change mask. [1, 1, fh, fw]."""
    m = torch.from_numpy(np.ascontiguousarray(allowed, dtype=np.float32)).to(device)[None, None]
    return 1.0 - F.adaptive_avg_pool2d(m, feature_size)


def mask_loss(features: torch.Tensor, features0: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """mean |(F − F0) · M_fixed| over channels and feature pixels (the reference's term, at feature scale)."""
    return ((features.to(torch.float32) - features0) * fixed).abs().mean()
