"""The Canny edge detector and seed 004's "Nearest" handle adjustment on synthetic images."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from engine.edges import canny, hysteresis
from engine.nearest import nearest_edge_adjust


def step_image(column: int, size: int = 64) -> np.ndarray:
    """Dark left part, bright right part: a vertical edge between columns column-1 and column."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:, column:] = 200
    return img


def test_canny_marks_a_step_edge_with_a_one_pixel_line() -> None:
    edges = canny(step_image(20))
    assert edges.shape == (64, 64) and edges.dtype == bool
    cols = np.nonzero(edges.any(axis=0))[0]
    assert cols.tolist() == [19]
    assert edges[:, 19].all()


def test_canny_on_flat_and_weak_images_finds_nothing() -> None:
    assert not canny(np.full((32, 32, 3), 128, dtype=np.uint8)).any()
    weak = np.zeros((32, 32), dtype=np.uint8)
    weak[:, 16:] = 10  # a gradient of 40 < the low threshold
    assert not canny(weak).any()


def test_canny_hysteresis_keeps_weak_pixels_connected_to_strong_ones() -> None:
    img = np.zeros((40, 40), dtype=np.float64)
    img[:, 20:] = 30.0  # weak step: magnitude 120, between low 100 and high 200
    img[:10, 20:] = 60.0  # strong in the top rows: magnitude 240
    e = canny(img)
    # rows 9-10 (where the strong part meets the weak one) bend off column 19; the rest is a line
    assert e[:9, 19].all() and e[11:, 19].all()  # the weak part survives through its connection
    img2 = np.zeros((40, 40), dtype=np.float64)
    img2[:, 20:] = 30.0  # weak everywhere, no strong seed
    assert not canny(img2).any()


def test_canny_horizontal_and_diagonal_edges() -> None:
    img = np.zeros((48, 48), dtype=np.uint8)
    img[30:, :] = 255
    rows = np.nonzero(canny(img).any(axis=1))[0]
    assert rows.tolist() == [29]
    yy, xx = np.mgrid[:48, :48]
    diag = np.where(xx > yy, 255, 0).astype(np.uint8)
    e = canny(diag)
    ys, xs = np.nonzero(e)
    assert len(xs) > 30 and np.abs(xs - ys).max() <= 1


def test_nearest_moves_the_handle_rate_of_the_way_to_the_nearest_edge_pixel() -> None:
    img = step_image(20)  # edge pixels at x = 19
    handles = np.array([[5.0, 30.0], [35.5, 12.25]])
    got = nearest_edge_adjust(img, handles, radius=40.0, rate=0.8)
    # nearest edge pixels: (19, 30) and (19, 12) (row 12 is nearer than row 13 to y = 12.25)
    np.testing.assert_allclose(got[0], [5.0 + 0.8 * 14.0, 30.0])
    np.testing.assert_allclose(got[1], [35.5 + 0.8 * (19 - 35.5), 12.25 + 0.8 * (12 - 12.25)])


def test_nearest_leaves_handles_without_an_edge_within_radius() -> None:
    img = step_image(20)
    handles = np.array([[60.0, 30.0], [19.0, 5.0], [55.0, 30.0]])
    got = nearest_edge_adjust(img, handles, radius=36.0, rate=0.8)
    np.testing.assert_array_equal(got[0], [60.0, 30.0])  # 41 px from the edge > 36
    np.testing.assert_array_equal(got[1], [19.0, 5.0])  # already on the edge: moves by 0
    np.testing.assert_allclose(got[2], [55.0 + 0.8 * (19 - 55.0), 30.0])  # exactly 36 px: inside
    flat = np.full((64, 64, 3), 90, dtype=np.uint8)
    np.testing.assert_array_equal(nearest_edge_adjust(flat, handles, radius=40.0), handles)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_nearest_rate(rate: float) -> None:
    got = nearest_edge_adjust(step_image(20), np.array([[9.0, 30.0]]), radius=40.0, rate=rate)
    np.testing.assert_allclose(got, [[9.0 + rate * 10.0, 30.0]])


# ---------------------------------------------------------------------------------------------
# Hysteresis on long chains, and the boxed nearest-edge search against the dense one


def spiral_path(n: int) -> list[tuple[int, int]]:
    """(row, col) pixels of one square spiral filling an n×n image, rings one pixel apart."""
    path, y, x = [(0, 0)], 0, 0
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    lengths = [n - 1, n - 1, n - 1] + [k for k in range(n - 3, 0, -2) for _ in (0, 1)]
    for i, length in enumerate(lengths):
        dy, dx = moves[i % 4]
        for _ in range(length):
            y, x = y + dy, x + dx
            path.append((y, x))
    return path


def flood_fill(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Reference hysteresis: breadth-first search from the strong pixels through weak ones."""
    out = strong & weak
    queue = deque(zip(*np.nonzero(out)))
    h, w = weak.shape
    while queue:
        y, x = queue.popleft()
        for ny in range(max(0, y - 1), min(h, y + 2)):
            for nx in range(max(0, x - 1), min(w, x + 2)):
                if weak[ny, nx] and not out[ny, nx]:
                    out[ny, nx] = True
                    queue.append((ny, nx))
    return out


def test_hysteresis_follows_a_long_spiral_to_its_end() -> None:
    n = 128
    path = spiral_path(n)
    weak = np.zeros((n, n), dtype=bool)
    weak[tuple(np.array(path).T)] = True
    assert len(path) == weak.sum() > n * n / 2  # one chain of ~8000 pixels, no ring touches another
    strong = np.zeros_like(weak)
    strong[path[-1]] = True  # seeded at the inner end only
    np.testing.assert_array_equal(hysteresis(strong, weak), weak)
    cut = weak.copy()
    cut[path[len(path) // 2]] = False  # break the chain: only the inner half stays
    got = hysteresis(strong, cut)
    assert got.sum() == len(path) - len(path) // 2 - 1
    np.testing.assert_array_equal(got, flood_fill(strong, cut))
    assert not hysteresis(np.zeros_like(weak), weak).any()


def test_hysteresis_matches_a_flood_fill_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        shape = tuple(rng.integers(1, 30, size=2))
        weak = rng.random(shape) < rng.random()
        strong = rng.random(shape) < 0.05
        np.testing.assert_array_equal(hysteresis(strong, weak), flood_fill(strong, weak))


def dense_nearest(edges: np.ndarray, handles: np.ndarray, radius: float, rate: float) -> np.ndarray:
    """Reference: distances from every handle to every edge pixel ([N, E]), first minimum wins."""
    ys, xs = np.nonzero(edges)
    if xs.size == 0:
        return handles.copy()
    edge = np.stack([xs, ys], axis=1).astype(np.float64)
    d2 = ((handles[:, None, :] - edge[None, :, :]) ** 2).sum(axis=2)
    best = d2.argmin(axis=1)
    within = d2[np.arange(len(handles)), best] <= radius * radius
    return np.where(within[:, None], handles + rate * (edge[best] - handles), handles)


def test_boxed_nearest_search_matches_the_dense_one() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    img = (((xx // 12 + yy // 17) % 2) * 180 + ((xx - 50) ** 2 + (yy - 40) ** 2 < 300) * 70).astype(np.uint8)
    edges = canny(img)
    assert edges.sum() > 200
    handles = np.concatenate(
        [
            rng.uniform(-20, 116, size=(200, 2)),  # some outside the image
            rng.integers(0, 96, size=(100, 2)).astype(np.float64),  # integer: exact ties occur
        ]
    )
    for radius in (0.5, 3.0, 7.5, 40.0, 500.0):
        got = nearest_edge_adjust(img, handles, radius=radius, rate=0.8)
        np.testing.assert_array_equal(got, dense_nearest(edges, handles, radius, 0.8))


def test_nearest_refuses_non_finite_handles() -> None:
    with pytest.raises(ValueError, match="finite"):
        nearest_edge_adjust(step_image(20), np.array([[np.nan, 3.0]]), radius=10.0)
