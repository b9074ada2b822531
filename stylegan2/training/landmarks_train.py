"""Train the landmark detector (`stylegan2.landmarks`) on procedural head renders with exact labels.

The detector must also work on a GAN's imitation of those renders (slightly blurred, noisy,
off-colour, a little distorted), so every batch is augmented: x-flip (left/right landmarks
swapped), a random similarity transform, colour jitter, Gaussian blur, a down-and-up resample,
noise and JPEG. Landmarks that are hidden (or pushed out of the image by the transform) do not
contribute to the position loss; a visibility head learns `visible`.

Training images are rendered once at the detector's input size (128 px) and kept in memory;
the held-out check renders separate heads at `eval_size` (256 px, the demo model's size) and
runs the public `detect_landmarks` on them, so the reported error is in the pixels the
benchmark uses. Budget: `minutes` of wall time and/or `steps`; the learning rate follows a
cosine over whichever ends first.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..heads.dataset import render_batch
from ..landmarks import CORE_LANDMARKS, HEATMAP_STRIDE, LandmarkDetector, detect_landmarks

# Left/right landmark pairs (head's own sides): swapped when an image is mirrored.
_MIRROR_PAIRS = (("mouth_left", "mouth_right"), ("eye_left", "eye_right"), ("brow_left", "brow_right"))


@dataclass(frozen=True)
class LandmarkTrainConfig:
    images: int = 20000  # training renders
    eval_images: int = 500  # held-out renders for the reported error
    eval_size: int = 256  # held-out render size (px): errors are reported in these pixels
    width: int = 24
    input_size: int = 128
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    minutes: float | None = 15.0
    steps: int | None = None
    data_seed: int = 1000  # heads dataset seed of the training renders
    eval_seed: int = 2000  # ... and of the held-out renders (different heads)
    seed: int = 0  # init and augmentation
    workers: int = 1  # render processes
    jpeg_fraction: float = 0.15
    augment: bool = True

    def validate(self) -> None:
        for name in ("images", "eval_images", "batch", "width", "workers", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.minutes is None and self.steps is None:
            raise ValueError("give a time budget (minutes) or a step count (steps), or both")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.jpeg_fraction <= 1:
            raise ValueError(f"jpeg_fraction must be in [0, 1], got {self.jpeg_fraction}")


@dataclass
class LandmarkTrainResult:
    model: LandmarkDetector
    steps: int
    seconds: float
    render_seconds: float
    eval: dict[str, Any]  # see evaluate_detector


def core_landmark_arrays(landmarks: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CORE_LANDMARKS columns of a heads batch (they are its first 10)."""
    k = len(CORE_LANDMARKS)
    return np.ascontiguousarray(landmarks[:, :k]), np.ascontiguousarray(visible[:, :k])


def _mirror_permutation(names: tuple[str, ...]) -> list[int]:
    perm = list(range(len(names)))
    for a, b in _MIRROR_PAIRS:
        if a in names and b in names:
            ia, ib = names.index(a), names.index(b)
            perm[ia], perm[ib] = ib, ia
    return perm


def _jpeg(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = images.copy()
    for i in range(len(out)):
        buf = io.BytesIO()
        Image.fromarray(out[i]).save(buf, format="JPEG", quality=int(rng.integers(35, 91)))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (sigma [N] px; 0 = unchanged) with reflect padding."""
    n, c, h, w = x.shape
    radius = 3
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # [N, 7]; sigma ~0 -> a delta
    k = k.repeat_interleave(c, dim=0)  # [N*C, 7]
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def mirror_and_warp(
    x: torch.Tensor, points: torch.Tensor, visible: torch.Tensor, gen: torch.Generator, mirror_perm: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random x-flip (left/right names swapped) and similarity transform, landmarks moved with the image.

    Points pushed outside the image become invisible.
    """
    n, _, s, _ = x.shape
    dev = x.device
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    fx = torch.where(flip[:, None], (s - 1) - points[..., 0], points[..., 0])
    points = torch.stack([fx, points[..., 1]], dim=-1)
    perm = torch.tensor(mirror_perm, device=dev)
    points = torch.where(flip[:, None, None], points[:, perm], points)
    visible = torch.where(flip[:, None], visible[:, perm], visible)

    # similarity transform about the centre, in normalised coordinates u = (2x + 1) / S - 1
    r = torch.rand(n, 4, generator=gen, device=dev) * 2 - 1
    angle, scale, shift = r[:, 0] * math.radians(15), 1 + r[:, 1] * 0.12, r[:, 2:] * 0.08
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    a = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # output -> input
    theta = torch.cat([a, shift[:, :, None]], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    u = (2 * points + 1) / s - 1 - shift[:, None, :]
    u = torch.einsum("nij,nkj->nki", torch.linalg.inv(a), u)
    points = ((u + 1) * s - 1) / 2
    visible = visible & ((points >= 0) & (points <= s - 1)).all(dim=-1)
    return x, points, visible


def degrade_photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter, blur (half), a down-and-up resample (a fifth) and noise (half): GAN-like flaws."""
    n, _, s, _ = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * 0.4)  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * 0.3) + mean  # contrast
    x = x + (rand(n, 1, 1, 1) * 2 - 1) * 0.15 + (rand(n, 3, 1, 1) * 2 - 1) * 0.08  # brightness, tint
    sigma = torch.where(rand(n) < 0.5, rand(n) * 1.2, torch.zeros(n, device=dev))
    x = _gaussian_blur(x, sigma)
    resample = rand(n) < 0.2
    small = F.interpolate(x, scale_factor=0.625, mode="bilinear", align_corners=False, antialias=True)
    x = torch.where(resample[:, None, None, None], F.interpolate(small, size=(s, s), mode="bilinear"), x)
    noise = torch.where(rand(n) < 0.5, rand(n) * 0.06, torch.zeros(n, device=dev))
    x = x + torch.randn(x.shape, generator=gen, device=dev) * noise[:, None, None, None]
    return x.clamp(-1, 1)


def landmark_loss(
    model: LandmarkDetector, x: torch.Tensor, points: torch.Tensor, visible: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean L1 position error (input px) over visible landmarks + a heatmap term + visibility BCE.

    The heatmap term is the cross-entropy of the softmax heatmap against a Gaussian (sigma one
    cell) at the true point: it makes early training converge faster; the position loss then
    refines to sub-cell precision through the soft-argmax.
    """
    logits, vis_logits = model.heatmaps(x)
    pred = model.soft_argmax(logits)
    w = visible.float()
    count = w.sum().clamp_min(1.0)
    pos = ((pred - points).abs().sum(dim=-1) * w).sum() / count
    n, k, h, ww = logits.shape
    c = model.centres
    sigma = float(HEATMAP_STRIDE)
    gx = torch.exp(-0.5 * ((c[:ww] - points[..., 0:1]) / sigma) ** 2)  # [N,K,w]
    gy = torch.exp(-0.5 * ((c[:h] - points[..., 1:2]) / sigma) ** 2)  # [N,K,h]
    target = gy[..., :, None] * gx[..., None, :]
    target = target / target.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    log_prob = torch.log_softmax(logits.float().reshape(n, k, -1), dim=-1)
    heat = (-(target.reshape(n, k, -1) * log_prob).sum(dim=-1) * w).sum() / count
    vis = F.binary_cross_entropy_with_logits(vis_logits.float(), visible.float())
    loss = pos + 0.5 * heat + 0.1 * vis
    return loss, {"pos_px": pos.detach(), "heat": heat.detach(), "vis": vis.detach()}


def render_training_set(cfg: LandmarkTrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training renders at input_size: images uint8 [N,S,S,3], core landmarks [N,10,2], visible [N,10]."""
    batch = render_batch(cfg.data_seed, cfg.images, cfg.input_size, workers=cfg.workers)
    points, visible = core_landmark_arrays(batch.landmarks, batch.visible)
    return batch.images, points, visible


def evaluate_detector(
    model: LandmarkDetector, images: np.ndarray, landmarks: np.ndarray, visible: np.ndarray
) -> dict[str, Any]:
    """Errors of `detect_landmarks` against exact labels, in pixels of `images`, visible landmarks only.

    Returns mean / median / p95 px, per-landmark mean px, visibility accuracy, and the same
    mean on degraded copies (Gaussian blur sigma 1 px + JPEG quality 75: a stand-in for GAN output).
    """
    det = detect_landmarks(model, images)
    err = np.linalg.norm(det.points - landmarks, axis=-1)
    vis_err = err[visible]
    per = {
        name: float(err[:, i][visible[:, i]].mean()) if visible[:, i].any() else float("nan")
        for i, name in enumerate(model.landmark_names)
    }
    degraded = np.stack([_degrade(im) for im in images])
    det_d = detect_landmarks(model, degraded)
    err_d = np.linalg.norm(det_d.points - landmarks, axis=-1)[visible]
    return {
        "images": len(images),
        "size": int(images.shape[1]),
        "mean_px": float(vis_err.mean()),
        "median_px": float(np.median(vis_err)),
        "p95_px": float(np.percentile(vis_err, 95)),
        "per_landmark_px": per,
        "visibility_accuracy": float(((det.visible > 0.5) == visible).mean()),
        "degraded_mean_px": float(err_d.mean()),
    }


def _degrade(image: np.ndarray) -> np.ndarray:
    from PIL import ImageFilter

    buf = io.BytesIO()
    Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)).save(buf, format="JPEG", quality=75)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def train_landmark_detector(
    cfg: LandmarkTrainConfig,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> LandmarkTrainResult:
    """Render, train within the budget, evaluate on held-out renders; the model comes back in eval mode."""
    cfg.validate()
    device = torch.device(device)
    t0 = time.monotonic()
    log(f"rendering {cfg.images} training heads at {cfg.input_size} px with {cfg.workers} worker(s)...")
    images, points, visible = render_training_set(cfg)
    render_seconds = time.monotonic() - t0
    log(f"  {render_seconds:.1f} s")

    torch.manual_seed(cfg.seed)
    model = LandmarkDetector(CORE_LANDMARKS, width=cfg.width, input_size=cfg.input_size).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mirror_perm = _mirror_permutation(model.landmark_names)
    budget = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    warmup = 100
    step, start, last_log = 0, time.monotonic(), 0.0
    while True:
        elapsed = time.monotonic() - start
        progress = max(elapsed / budget, step / cfg.steps if cfg.steps else 0.0)
        if progress >= 1:
            break
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, len(images), cfg.batch)
        batch = images[idx]
        if cfg.augment and cfg.jpeg_fraction > 0:
            jpeg = rng.random(cfg.batch) < cfg.jpeg_fraction
            if jpeg.any():
                batch[jpeg] = _jpeg(batch[jpeg], rng)
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        p = torch.from_numpy(points[idx]).to(device)
        v = torch.from_numpy(visible[idx]).to(device)
        if cfg.augment:
            x, p, v = mirror_and_warp(x, p, v, gen, mirror_perm)
            x = degrade_photometric(x, gen)
        loss, parts = landmark_loss(model, x, p, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            now = {k: float(v) for k, v in parts.items()}  # this batch (one host sync per log line)
            log(
                f"step {step:6d}  {elapsed / 60:5.1f} min  lr {lr:.2e}  train L1 {now['pos_px']:.2f} "
                f"(input px, augmented)  heat {now['heat']:.2f}  vis {now['vis']:.3f}"
            )
    seconds = time.monotonic() - start
    model.eval()
    log(f"trained {step} steps in {seconds / 60:.1f} min; evaluating on {cfg.eval_images} held-out heads...")
    held = render_batch(cfg.eval_seed, cfg.eval_images, cfg.eval_size, workers=cfg.workers)
    held_points, held_visible = core_landmark_arrays(held.landmarks, held.visible)
    result = evaluate_detector(model, held.images, held_points, held_visible)
    return LandmarkTrainResult(model.cpu(), step, seconds, render_seconds, result)
