"""Seed 004's "Nearest" pre-adjustment: move handles toward the nearest edge, before the drag.

Handles in texture-less regions track poorly; the seed moves each handle `rate` of the way to the
nearest Canny edge pixel within R3 (40 px at 512 px in their ablation; rate 0.8). Canny runs once
on the whole rendered image (no crop border artefacts); the R3 neighbourhood is the disc
‖e − p‖ <= R3. A handle with no edge pixel within R3 stays where it is. Ties between equally
near edge pixels go to the first in row-major order.
"""

from __future__ import annotations

import math

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
    if not np.isfinite(pts).all() or math.isnan(radius):
        raise ValueError("handles and radius must be finite numbers")
    edges = canny(image, low, high)
    h, w = edges.shape
    out = pts.copy()
    for i, (x, y) in enumerate(pts):
        # Only edge pixels in the handle's R3 box can be within R3: O(R3²) per handle, never [N, E].
        x0, x1 = math.ceil(max(0.0, x - radius)), math.floor(min(w - 1.0, x + radius))
        y0, y1 = math.ceil(max(0.0, y - radius)), math.floor(min(h - 1.0, y + radius))
        if x0 > x1 or y0 > y1:
            continue
        ys, xs = np.nonzero(edges[y0 : y1 + 1, x0 : x1 + 1])  # row-major, as over the whole image
        if xs.size == 0:
            continue
        ex, ey = xs + float(x0), ys + float(y0)
        d2 = (ex - x) ** 2 + (ey - y) ** 2
        best = int(d2.argmin())
        if d2[best] <= radius * radius:
            out[i] = pts[i] + rate * (np.array([ex[best], ey[best]]) - pts[i])
    return out
