"""Training images, held on the training device as one uint8 tensor [N, 3, R, R].

Two sources: an image folder (PNG/JPEG, centre-cropped and resized to the resolution) and
the procedural cartoon heads of `stylegan2.heads`, rendered in parallel worker processes.
Heads stream in: training starts once `min_ready` images exist while the workers keep
filling the tensor, and a finished set is cached as .npy so a later run on the same
machine loads it instead of rendering again.

Batches are drawn on the device (random indices, optional x-flip), so no host work or
host-device sync happens per step.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HEADS_CHUNK = 64  # images per render task


class DatasetError(ValueError):
    """Training data that cannot be used, with a message saying why."""


class ImageDataset:
    """uint8 images on a device; the first `num_ready` of `capacity` slots hold images."""

    def __init__(
        self, capacity: int, resolution: int, device: torch.device | str, mirror: bool = True
    ) -> None:
        if capacity < 1:
            raise DatasetError("the dataset has no images")
        self.resolution = resolution
        self.device = torch.device(device)
        self.mirror = mirror
        self.images = torch.empty(
            [capacity, 3, resolution, resolution], dtype=torch.uint8, device=self.device
        )
        self.num_ready = 0

    @property
    def capacity(self) -> int:
        return self.images.shape[0]

    @property
    def complete(self) -> bool:
        return self.num_ready == self.capacity

    def append(self, batch_nhwc: np.ndarray) -> None:
        """Copy [n, R, R, 3] uint8 images into the next free slots."""
        n = batch_nhwc.shape[0]
        if self.num_ready + n > self.capacity:
            raise DatasetError("more images than the dataset's capacity")
        src = torch.from_numpy(np.ascontiguousarray(batch_nhwc)).permute(0, 3, 1, 2)
        self.images[self.num_ready : self.num_ready + n].copy_(src)
        self.num_ready += n

    def poll(self) -> None:
        """Take in images rendered since the last call (streaming sources); a no-op here."""

    def wait(self, count: int | None = None) -> None:
        """Block until `count` (default: all) images are ready; a no-op for in-memory sources."""

    def close(self) -> None:
        """Stop background work, if any."""

    def sample(self, batch: int) -> torch.Tensor:
        """A random batch in [-1, 1], float32 [batch, 3, R, R], drawn with replacement on the device."""
        if self.num_ready == 0:
            raise DatasetError("no images are ready yet")
        idx = torch.randint(0, self.num_ready, [batch], device=self.device)
        img = self.images[idx].to(torch.float32) / 127.5 - 1
        if self.mirror:
            flip = torch.rand([batch, 1, 1, 1], device=self.device) < 0.5
            img = torch.where(flip, img.flip(3), img)
        return img

    def grid_images(self, count: int) -> torch.Tensor:
        """The first `count` ready images as floats in [-1, 1] (for the reals grid)."""
        return self.images[: min(count, self.num_ready)].to(torch.float32) / 127.5 - 1


# -- image folders ------------------------------------------------------------------------------
def find_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{folder}: not a folder of images (and not 'heads')")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no PNG or JPEG images found")
    return files


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """One image as [R, R, 3] uint8: RGB, centre-cropped to a square, Lanczos-resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def _load_images_task(args: tuple[Sequence[str], int]) -> np.ndarray:
    paths, resolution = args
    return np.stack([load_image(p, resolution) for p in paths])


def _process_context() -> mp.context.BaseContext:
    """forkserver where there is one (fork is unsafe once torch's threads run), else spawn."""
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def load_folder(
    folder: str | Path, resolution: int, device: torch.device | str, mirror: bool = True, workers: int = 0
) -> ImageDataset:
    files = [str(p) for p in find_images(folder)]
    ds = ImageDataset(len(files), resolution, device, mirror)
    tasks = [(files[i : i + 256], resolution) for i in range(0, len(files), 256)]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers, mp_context=_process_context()) as ex:
            for arr in ex.map(_load_images_task, tasks):
                ds.append(arr)
    else:
        for task in tasks:
            ds.append(_load_images_task(task))
    return ds


# -- procedural heads ---------------------------------------------------------------------------
def render_heads(seed: int, start: int, count: int, resolution: int) -> np.ndarray:
    """Heads start .. start+count-1 of the set `seed` as [count, R, R, 3] uint8: the same images
    as `stylegan2.heads.dataset` renders (head k of set s comes from default_rng([s, k]))."""
    try:
        from ..heads.dataset import render_batch
    except ImportError as e:  # pragma: no cover - the heads package ships with the repo
        raise DatasetError(f"the procedural heads renderer (stylegan2.heads) is unavailable: {e}") from e
    return render_batch(seed, count, resolution, start=start, workers=1).images


def _render_heads_task(args: tuple[int, int, int, int]) -> tuple[int, np.ndarray]:
    seed, start, count, resolution = args
    return start, render_heads(seed, start, count, resolution)


def heads_renderer_version() -> str:
    """A digest of the renderer's source: a cached set is reused only for the same renderer."""
    from .. import heads

    h = hashlib.sha256()
    for path in sorted(Path(heads.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    h.update(b"render_batch(seed, count, size, start) v1")
    return h.hexdigest()[:12]


def heads_cache_path(cache_dir: str | Path, num: int, resolution: int, seed: int) -> Path:
    return Path(cache_dir) / f"heads-r{resolution}-n{num}-s{seed}-{heads_renderer_version()}.npy"


class HeadsDataset(ImageDataset):
    """Renders heads 0..num-1 in a process pool in the background; `poll()` takes them in."""

    def __init__(
        self,
        num: int,
        resolution: int,
        device: torch.device | str,
        seed: int = 0,
        mirror: bool = True,
        workers: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(num, resolution, device, mirror)
        self.seed = seed
        self.cache_path = heads_cache_path(cache_dir, num, resolution, seed) if cache_dir else None
        self._queue: queue.Queue[tuple[int, np.ndarray] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.from_cache = False
        self._finished = False
        if self.cache_path is not None and self.cache_path.is_file():
            cached = np.load(self.cache_path, mmap_mode="r")
            if cached.shape == (num, resolution, resolution, 3) and cached.dtype == np.uint8:
                for i in range(0, num, 4096):
                    self.append(np.array(cached[i : i + 4096]))
                self.from_cache = self._finished = True
                return
        workers = workers or max((os.cpu_count() or 2) - 2, 1)
        self._thread = threading.Thread(target=self._render_all, args=(workers,), daemon=True)
        self._thread.start()

    def _render_all(self, workers: int) -> None:
        tasks = [
            (self.seed, i, min(HEADS_CHUNK, self.capacity - i), self.resolution)
            for i in range(0, self.capacity, HEADS_CHUNK)
        ]
        store = None
        tmp = None
        try:
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_name(self.cache_path.name + f".tmp{os.getpid()}")
                shape = (self.capacity, self.resolution, self.resolution, 3)
                store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            with ProcessPoolExecutor(workers, mp_context=_process_context()) as ex:
                for start, arr in ex.map(_render_heads_task, tasks):
                    if self._stop.is_set():
                        ex.shutdown(wait=False, cancel_futures=True)
                        return
                    if store is not None:
                        store[start : start + arr.shape[0]] = arr
                    self._queue.put((start, arr))
            if store is not None and tmp is not None:
                store.flush()
                del store
                os.replace(tmp, self.cache_path)
                tmp = None
            self._queue.put(None)
        except BaseException as e:  # surfaced in the training thread by poll()
            self._queue.put(e)
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()

    def _take(self, item: tuple[int, np.ndarray] | BaseException | None) -> None:
        if isinstance(item, BaseException):
            raise DatasetError(f"rendering heads failed: {item}") from item
        if item is None:
            self._finished = True
        else:
            self.append(item[1])

    def poll(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._take(item)

    def wait(self, count: int | None = None) -> None:
        """Block until `count` images are ready; None = all of them and the cache file written."""
        if count is None:
            while not self._finished:
                self._take(self._queue.get())
            return
        while self.num_ready < min(count, self.capacity) and not self._finished:
            self._take(self._queue.get())

    def close(self) -> None:
        self._stop.set()


def build_dataset(
    data: str,
    resolution: int,
    device: torch.device | str,
    *,
    mirror: bool = True,
    num_images: int = 50000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    min_ready: int | None = None,
) -> ImageDataset:
    """'heads' -> streaming procedural heads (blocks until `min_ready`, default all); else a folder."""
    if resolution < 8 or resolution & (resolution - 1):
        raise DatasetError(f"resolution must be a power of two >= 8, got {resolution}")
    if data == "heads":
        if num_images < 1:
            raise DatasetError(f"--num-images must be >= 1, got {num_images}")
        ds = HeadsDataset(num_images, resolution, device, seed, mirror, workers, cache_dir)
        ds.wait(min_ready)
        return ds
    return load_folder(data, resolution, device, mirror, workers or 0)
