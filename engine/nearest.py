"""Seed 004's "Nearest" pre-adjustment: move handles toward the nearest edge, before the drag.

Handles in texture-less regions track poorly; the seed moves each handle `rate` of the way to the
nearest Canny edge pixel within R3 (40 px at 512 px in their ablation; rate 0.8). Canny runs once
on the whole rendered image (no crop border artefacts); the R3 neighbourhood is the disc
‖e − p‖ <= R3. A handle with no edge pixel within R3 stays where it is. Ties between equally
near edge pixels go to the first in row-major order.
"""

from __future__ import annotations

import numpy as np

from .edges import HIGH_THRESHOLD, LOW_THRESHOLD, canny


def nearest_edge_adjust(
    image: np.ndarray,
    handles: np.ndarray,
    radius: float,
    rate: float = 0.8,
    low: float = LOW_THRESHOLD,
    high: float = HIGH_THRESHOLD,
) -> np.ndarray:
    """Adjusted handles [N, 2] (x, y) float64; `image` is H×W×3 or H×W on a 0-255 scale."""
    pts = np.asarray(handles, dtype=np.float64).reshape(-1, 2)
    ys, xs = np.nonzero(canny(image, low, high))
    if xs.size == 0:
        return pts.copy()
    edge = np.stack([xs, ys], axis=1).astype(np.float64)  # [E, 2] row-major order
    d2 = ((pts[:, None, :] - edge[None, :, :]) ** 2).sum(axis=2)  # [N, E]
    best = d2.argmin(axis=1)
    within = d2[np.arange(len(pts)), best] <= radius * radius
    moved = pts + rate * (edge[best] - pts)
    return np.where(within[:, None], moved, pts)
