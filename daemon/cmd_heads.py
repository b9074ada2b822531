"""`draggan heads`: render procedural cartoon heads with landmarks (a dataset folder or a preview grid).

Torch-free: the renderer is numpy + Pillow; imports happen inside run_heads to keep --help fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_heads_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output folder (dataset) or PNG file (with --grid)")
    p.add_argument(
        "--count", type=int, default=None, help="number of heads (default: 1000, or 16 with --grid)"
    )
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; image k depends only on (seed, k)")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    p.add_argument(
        "--supersample", type=int, default=2, help="rays per pixel per axis (anti-aliasing, default 2)"
    )
    p.add_argument(
        "--grid", action="store_true", help="write one preview grid PNG instead of a dataset folder"
    )
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: square-ish)")
    p.add_argument("--start", type=int, default=0, help="first image index of the grid (default 0)")
    p.add_argument(
        "--landmarks", action="store_true", help="grid: mark visible (green) and hidden (red) landmarks"
    )
    p.add_argument("--overwrite", action="store_true", help="dataset: allow writing into a non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_heads(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from stylegan2.heads.dataset import draw_landmarks, make_grid, render_batch, write_dataset

    count = args.count if args.count is not None else (16 if args.grid else 1000)
    start_time = time.perf_counter()
    try:
        with tqdm(total=max(count, 0), unit="img", disable=args.quiet, file=sys.stderr) as bar:
            if args.grid:
                if args.out.suffix.lower() != ".png":
                    raise ValueError(f"--grid writes a PNG; give a .png path, got {args.out}")
                if count == 0:
                    raise ValueError("--grid needs --count >= 1")
                batch = render_batch(
                    args.seed,
                    count,
                    args.size,
                    start=args.start,
                    workers=args.workers,
                    supersample=args.supersample,
                    progress=bar.update,
                )
                images = batch.images
                if args.landmarks:
                    radius = max(1, args.size // 128)
                    images = [
                        draw_landmarks(im, lm, v, radius)
                        for im, lm, v in zip(images, batch.landmarks, batch.visible)
                    ]
                args.out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_grid(images, cols=args.cols)).save(args.out, optimize=True)
            else:
                write_dataset(
                    args.out,
                    count,
                    args.size,
                    seed=args.seed,
                    workers=args.workers,
                    supersample=args.supersample,
                    overwrite=args.overwrite,
                    progress=bar.update,
                )
    except ValueError as e:
        print(f"draggan heads: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start_time
    per_image = 1000 * seconds / max(count, 1)
    what = "grid" if args.grid else "dataset"
    print(
        f"wrote {what} {args.out}: {count} heads at {args.size} px in {seconds:.1f} s "
        f"({per_image:.1f} ms/image wall, {args.workers} workers)"
    )
    return 0
