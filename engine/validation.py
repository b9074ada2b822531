"""Input checks with messages that say what is wrong, where, and what would be valid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import DragInputError


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def check_points(name: str, points: Any, resolution: int) -> np.ndarray:
    """[N, 2] (x, y) float64, N >= 1, finite, inside [0, resolution - 1]; `name` is 'handles' or 'targets'."""
    try:
        arr = np.asarray(_to_numpy(points), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DragInputError(f"{name} must be an [N, 2] array of (x, y) numbers: {e}") from None
    if arr.size == 0:
        raise DragInputError(f"at least one point is required in {name}, got none")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DragInputError(
            f"{name} must have shape [N, 2] (one (x, y) per point), got shape {list(arr.shape)}"
        )
    hi = resolution - 1
    for i, (x, y) in enumerate(arr):
        for axis, v in (("x", x), ("y", y)):
            if not np.isfinite(v):
                raise DragInputError(f"{name}[{i}] has {axis} = {v}; coordinates must be finite numbers")
            if not 0 <= v <= hi:
                raise DragInputError(
                    f"{name}[{i}] = ({x:g}, {y:g}) has {axis} = {v:g} outside the image: "
                    f"valid range is 0 <= {axis} <= {hi} for this {resolution} px model"
                )
    return arr


def check_pair_counts(handles: np.ndarray, targets: np.ndarray) -> None:
    if len(handles) != len(targets):
        raise DragInputError(
            f"got {len(handles)} handles but {len(targets)} targets; each handle needs exactly one target"
        )


def check_mask(mask: Any, resolution: int) -> np.ndarray | None:
    """None, or an [H, W] bool/integer array at model resolution -> bool (True = allowed to change)."""
    if mask is None:
        return None
    if not isinstance(mask, (np.ndarray, torch.Tensor)):
        raise DragInputError(
            f"mask must be a numpy array of shape ({resolution}, {resolution}) (bool or integer, "
            f"nonzero = allowed to change) or None, got {type(mask).__name__}"
        )
    arr = _to_numpy(mask)
    if arr.dtype.kind not in "biu":
        raise DragInputError(
            f"mask must be bool or integer (nonzero = allowed to change), got dtype {arr.dtype}"
        )
    if arr.shape != (resolution, resolution):
        raise DragInputError(
            f"mask must have shape ({resolution}, {resolution}) (rows, columns at model resolution), "
            f"got {tuple(arr.shape)}"
        )
    return arr != 0


def check_latent(latent: Any, num_ws: int, w_dim: int, device: torch.device) -> torch.Tensor:
    """[num_ws, w_dim] or [1, num_ws, w_dim], finite -> float32 [1, num_ws, w_dim] on device (a copy)."""
    if not isinstance(latent, torch.Tensor):
        try:
            latent = torch.from_numpy(np.asarray(latent, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise DragInputError(f"latent must be an array of numbers: {e}") from None
    t = latent.detach().to(device=device, dtype=torch.float32)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or tuple(t.shape) != (1, num_ws, w_dim):
        raise DragInputError(
            f"latent must have shape [{num_ws}, {w_dim}] or [1, {num_ws}, {w_dim}] for this model, "
            f"got {list(latent.shape)}"
        )
    if not torch.isfinite(t).all():
        raise DragInputError("latent contains NaN or infinite values")
    return t.clone()
