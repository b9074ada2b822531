"""A compact Canny edge detector in numpy (Sobel, non-maximum suppression, hysteresis).

Used only by the "Nearest" handle pre-adjustment, so OpenCV is not a dependency. Follows
cv2.Canny's conventions: no pre-blur, 3×3 Sobel on 0-255 grey values, reflect-101 borders,
thresholds on the (L2) gradient magnitude, 8-connected hysteresis. On a plateau of equal
magnitudes across an edge the pixel with the smaller coordinate along the quantised gradient
direction wins, so a vertical step between columns c and c+1 gives a one-pixel line at column c.
"""

from __future__ import annotations

import numpy as np

LOW_THRESHOLD = 100.0
HIGH_THRESHOLD = 200.0


def to_gray(image: np.ndarray) -> np.ndarray:
    """H×W or H×W×3 (uint8 or float, 0-255 scale) -> H×W float64 grey (BT.601 luma, as OpenCV)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    if img.ndim != 2:
        raise ValueError(f"image must be H×W or H×W×3, got shape {list(np.shape(image))}")
    return img


def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) with x = columns, y = rows (down), reflect-101 border."""
    p = np.pad(gray, 1, mode="reflect")
    h, w = gray.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return gx, gy


def non_max_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Bool map of pixels that are maxima along their (4-way quantised) gradient direction."""
    h, w = magnitude.shape
    m = np.pad(magnitude, 1, mode="constant")
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    # (dx, dy) of the neighbour on the positive side of the gradient for each direction bin.
    bins = [
        ((angle < 22.5) | (angle >= 157.5), (1, 0)),
        ((angle >= 22.5) & (angle < 67.5), (1, 1)),
        ((angle >= 67.5) & (angle < 112.5), (0, 1)),
        ((angle >= 112.5) & (angle < 157.5), (-1, 1)),
    ]
    keep = np.zeros((h, w), dtype=bool)
    for sel, (dx, dy) in bins:
        ahead = m[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = m[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= sel & (magnitude > behind) & (magnitude >= ahead)
    return keep


def hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Weak pixels 8-connected (through weak pixels) to a strong one, plus the strong ones.

    Connected components of the weak pixels, found by vectorised union-find (hook each root to
    the smallest neighbouring root, then jump pointers) in O(log n) passes, so the cost does not
    grow with the length of an edge chain; components holding a strong pixel are kept.
    """
    weak = np.asarray(weak, dtype=bool)
    seeds = np.asarray(strong, dtype=bool) & weak
    h, w = weak.shape
    flat = np.flatnonzero(weak)
    if flat.size == 0 or not seeds.any():
        return np.zeros((h, w), dtype=bool)
    node = np.full(h * w, -1, dtype=np.int64)
    node[flat] = np.arange(flat.size)
    grid = node.reshape(h, w)
    # The 4 "forward" neighbour directions cover every 8-connected pair once.
    pairs = [
        (grid[:, :-1], grid[:, 1:]),
        (grid[:-1, :], grid[1:, :]),
        (grid[:-1, :-1], grid[1:, 1:]),
        (grid[:-1, 1:], grid[1:, :-1]),
    ]
    a = np.concatenate([u.ravel() for u, _ in pairs])
    b = np.concatenate([v.ravel() for _, v in pairs])
    linked = (a >= 0) & (b >= 0)
    a, b = a[linked], b[linked]
    parent = np.arange(flat.size)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, hi, lo)  # roots only point down: no cycles
        while True:  # full path compression: every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    keep = np.zeros(flat.size, dtype=bool)
    keep[parent[node[np.flatnonzero(seeds)]]] = True
    edges = np.zeros(h * w, dtype=bool)
    edges[flat] = keep[parent]
    return edges.reshape(h, w)


def canny(image: np.ndarray, low: float = LOW_THRESHOLD, high: float = HIGH_THRESHOLD) -> np.ndarray:
    """Bool H×W edge map of an H×W or H×W×3 image on a 0-255 scale."""
    if not 0 <= low <= high:
        raise ValueError(f"thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    gray = to_gray(image)
    gx, gy = sobel(gray)
    magnitude = np.hypot(gx, gy)
    thin = non_max_suppression(magnitude, gx, gy)
    return hysteresis(thin & (magnitude >= high), thin & (magnitude >= low) & (magnitude > 0))
