"""Many heads at once: in-memory batches and dataset folders, rendered in parallel.

Image k of dataset seed s is drawn from its own generator, `default_rng([s, k])`, so it
is the same whatever the worker count, chunking or start offset. Workers are processes
(the renderer is numpy-bound); each renders a contiguous chunk of indices.

A dataset folder holds `00000/img00000000.png`, ... (1000 per subfolder, the layout of
NVIDIA's dataset_tool), `landmarks.npz` (landmarks, visible, factors, indices, files and
the name lists) and `heads.json` (the settings and conventions, human-readable).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .factors import FACTOR_NAMES, HeadFactors, sample_factors
from .render import LANDMARK_NAMES, check_render_args, render_head

LANDMARKS_FILE = "landmarks.npz"
META_FILE = "heads.json"
COORDINATES = "x right, y down, output pixels; pixel (i, j) has its centre at x=i, y=j"


@dataclass(frozen=True)
class HeadBatch:
    """Rendered heads: images [N,S,S,3] uint8, landmarks [N,K,2] float32 (x, y), visible [N,K] bool,
    factors [N,F] float64 (`FACTOR_NAMES` order) and their dataset indices [N] int64."""

    images: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    factors: np.ndarray
    indices: np.ndarray


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def head_factors(seed: int, index: int) -> HeadFactors:
    """The factors of image `index` of dataset `seed`."""
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    return sample_factors(np.random.default_rng([seed, index]))


def _render_chunk(
    seed: int, start: int, stop: int, size: int, supersample: int, out_dir: str | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Render indices start..stop-1; write PNGs when out_dir is given (then no images return)."""
    count = stop - start
    images = None if out_dir else np.empty((count, size, size, 3), dtype=np.uint8)
    landmarks = np.empty((count, len(LANDMARK_NAMES), 2), dtype=np.float32)
    visible = np.empty((count, len(LANDMARK_NAMES)), dtype=bool)
    factors = np.empty((count, len(FACTOR_NAMES)), dtype=np.float64)
    for i, k in enumerate(range(start, stop)):
        f = head_factors(seed, k)
        r = render_head(f, size, supersample)
        if out_dir:
            path = Path(out_dir) / image_path(k)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(r.image).save(path, compress_level=3)
        else:
            images[i] = r.image
        landmarks[i], visible[i], factors[i] = r.landmarks, r.visible, f.to_vector()
    return images, landmarks, visible, factors


def image_path(index: int) -> str:
    """Relative path of image `index` in a dataset folder."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def _chunks(start: int, count: int, workers: int) -> list[tuple[int, int]]:
    size = max(1, min(64, math.ceil(count / (4 * workers))))
    return [(a, min(a + size, start + count)) for a in range(start, start + count, size)]


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork is unsafe once threads run (torch, BLAS); forkserver where there is one, else spawn
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _run_chunks(
    seed: int,
    start: int,
    count: int,
    size: int,
    supersample: int,
    workers: int,
    out_dir: str | None,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]]]:
    """Yield (chunk start, chunk result) in index order."""
    chunks = _chunks(start, count, workers)
    if workers == 1 or len(chunks) == 1:
        for a, b in chunks:
            result = _render_chunk(seed, a, b, size, supersample, out_dir)
            if progress:
                progress(b - a)
            yield a, result
        return
    with _pool(workers) as pool:
        futures = [
            (a, b, pool.submit(_render_chunk, seed, a, b, size, supersample, out_dir)) for a, b in chunks
        ]
        for a, b, future in futures:
            try:
                result = future.result()
            except BrokenProcessPool as e:
                raise RuntimeError(
                    "a head-rendering worker process died (out of memory, or a script that starts "
                    "workers without an `if __name__ == '__main__':` guard)"
                ) from e
            if progress:
                progress(b - a)
            yield a, result


def render_batch(
    seed: int,
    count: int,
    size: int = 256,
    *,
    start: int = 0,
    workers: int = 1,
    supersample: int = 2,
    progress: Callable[[int], None] | None = None,
) -> HeadBatch:
    """Render images start..start+count-1 of dataset `seed` into memory."""
    seed, count, start = (
        _check_int("seed", seed, 0),
        _check_int("count", count, 0),
        _check_int("start", start, 0),
    )
    workers = _check_int("workers", workers, 1)
    check_render_args(size, supersample)
    k = len(LANDMARK_NAMES)
    batch = HeadBatch(
        images=np.empty((count, size, size, 3), dtype=np.uint8),
        landmarks=np.empty((count, k, 2), dtype=np.float32),
        visible=np.empty((count, k), dtype=bool),
        factors=np.empty((count, len(FACTOR_NAMES)), dtype=np.float64),
        indices=np.arange(start, start + count, dtype=np.int64),
    )
    for a, (images, landmarks, visible, factors) in _run_chunks(
        seed, start, count, size, supersample, workers, None, progress
    ):
        rows = slice(a - start, a - start + landmarks.shape[0])
        batch.images[rows], batch.landmarks[rows], batch.visible[rows], batch.factors[rows] = (
            images,
            landmarks,
            visible,
            factors,
        )
    return batch


def write_dataset(
    out_dir: str | os.PathLike[str],
    count: int,
    size: int = 256,
    *,
    seed: int = 0,
    workers: int = 1,
    supersample: int = 2,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Render `count` heads into the folder `out_dir` (PNGs + landmarks.npz + heads.json).

    Refuses a non-empty folder unless `overwrite`. Returns the path of landmarks.npz.
    """
    seed, count = _check_int("seed", seed, 0), _check_int("count", count, 0)
    workers = _check_int("workers", workers, 1)
    check_render_args(size, supersample)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a folder: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder is not empty: {out} (pass overwrite to write into it)")
    out.mkdir(parents=True, exist_ok=True)
    k = len(LANDMARK_NAMES)
    landmarks = np.empty((count, k, 2), dtype=np.float32)
    visible = np.empty((count, k), dtype=bool)
    factors = np.empty((count, len(FACTOR_NAMES)), dtype=np.float64)
    for a, (_, lm, vis, fac) in _run_chunks(seed, 0, count, size, supersample, workers, str(out), progress):
        rows = slice(a, a + lm.shape[0])
        landmarks[rows], visible[rows], factors[rows] = lm, vis, fac
    path = out / LANDMARKS_FILE
    np.savez(
        path,
        landmarks=landmarks,
        visible=visible,
        factors=factors,
        indices=np.arange(count, dtype=np.int64),
        files=np.array([image_path(i) for i in range(count)]),
        landmark_names=np.array(LANDMARK_NAMES),
        factor_names=np.array(FACTOR_NAMES),
    )
    meta = {
        "generator": "stylegan2.heads",
        "seed": seed,
        "count": count,
        "size": size,
        "supersample": supersample,
        "coordinates": COORDINATES,
        "landmark_names": list(LANDMARK_NAMES),
        "factor_names": list(FACTOR_NAMES),
        "left_right": "the head's own left/right (its left eye is on the image right when frontal)",
        "image_paths": "00000/img00000000.png ... (1000 per folder)",
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_landmarks(out_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a dataset folder's landmarks.npz."""
    path = Path(out_dir) / LANDMARKS_FILE
    if not path.is_file():
        raise ValueError(f"not a heads dataset folder (no {LANDMARKS_FILE}): {out_dir}")
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 0, fill: int = 255) -> np.ndarray:
    """Tile images [N,H,W,3] uint8 into one [rows*(H+pad)-pad, cols*(W+pad)-pad, 3] image."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N,H,W,C] array, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = _check_int("cols", cols, 1) if cols is not None else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, dtype=images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = images[i]
    return grid


def draw_landmarks(
    image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, radius: int = 1
) -> np.ndarray:
    """A copy of `image` with visible landmarks as green squares and hidden ones as red."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    for (x, y), vis in zip(np.rint(landmarks).astype(int), visible):
        if 0 <= x < w and 0 <= y < h:
            out[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1] = (
                (40, 220, 40) if vis else (230, 40, 40)
            )
    return out


class HeadsTorchDataset:
    """Map-style dataset for torch's DataLoader, rendering on the fly (torch imported lazily).

    Item k: dict(image=float32 [3,S,S] in [-1, 1], landmarks=[K,2], visible=[K] bool, factors=[F]).
    A plain class (DataLoader needs only __len__/__getitem__), so it pickles for worker processes.
    """

    def __init__(self, length: int, size: int = 256, seed: int = 0, supersample: int = 2) -> None:
        self.length = _check_int("length", length, 0)
        self.seed = _check_int("seed", seed, 0)
        check_render_args(size, supersample)
        self.size, self.supersample = int(size), int(supersample)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} heads")
        f = head_factors(self.seed, index)
        r = render_head(f, self.size, self.supersample)
        image = torch.from_numpy(r.image).permute(2, 0, 1).float() / 127.5 - 1
        return {
            "image": image,
            "landmarks": torch.from_numpy(r.landmarks),
            "visible": torch.from_numpy(r.visible),
            "factors": torch.from_numpy(f.to_vector().astype(np.float32)),
        }
