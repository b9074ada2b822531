"""A small CNN that finds the 10 core face landmarks of the procedural heads (and of a GAN trained on them).

The benchmark needs landmarks on generated images ("drag image 1's landmarks to image 2's,
detect again"), so the detector is trained on `stylegan2.heads` renders, whose landmarks
are exact. It knows nothing of dragging.

Design: the image is resized to `input_size` (128 px), an encoder of four stride-2 stages
(64² … 8²) feeds a small top-down decoder back to 32², one heatmap per landmark; a spatial
softmax + expectation (soft-argmax, "integral regression") turns each heatmap into
sub-pixel coordinates, which is far more precise than regressing coordinates from pooled
features. A linear head on the pooled 8² features predicts per-landmark visibility.

Files are safetensors (fp16 by default) with the architecture in the metadata, so loading
runs no code. Points are (x, y) pixels of the image passed in, pixel (i, j) centred at x=i, y=j
(the convention of `stylegan2.heads` and the drag engine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .heads.render import LANDMARK_NAMES

CORE_LANDMARKS: tuple[str, ...] = LANDMARK_NAMES[:10]
"""nose_tip, chin, mouth_left/right, upper_lip, lower_lip, eye_left/right, brow_left/right."""

FORMAT_NAME = "krita-draggan/landmark-detector"
FORMAT_VERSION = "1"
HEATMAP_STRIDE = 4  # heatmap cell size in input pixels (32² heatmaps at 128 px)


class LandmarkFileError(ValueError):
    """A landmark-detector file that cannot be used, with a message saying why."""


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Stage(nn.Module):
    """Stride-2 conv then a residual 3×3 pair."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = _conv_bn(cin, cout, stride=2)
        self.conv1 = _conv_bn(cout, cout)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.conv2(self.conv1(x)), inplace=True)


class LandmarkDetector(nn.Module):
    """Heatmap + soft-argmax landmark regressor. `forward` takes [N,3,S,S] in [-1,1] at S = input_size
    and returns (points [N,K,2] in input pixels, visibility logits [N,K])."""

    def __init__(
        self,
        landmark_names: tuple[str, ...] | list[str] = CORE_LANDMARKS,
        width: int = 24,
        input_size: int = 128,
    ) -> None:
        super().__init__()
        if input_size % 16 or input_size < 32:
            raise ValueError(f"input_size must be a multiple of 16 and >= 32, got {input_size}")
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        if not landmark_names:
            raise ValueError("landmark_names must not be empty")
        self.landmark_names = tuple(str(n) for n in landmark_names)
        self.width = int(width)
        self.input_size = int(input_size)
        w, k = self.width, len(self.landmark_names)
        self.init_kwargs = {"landmark_names": list(self.landmark_names), "width": w, "input_size": input_size}
        self.stage1 = _Stage(3, w)  # 1/2
        self.stage2 = _Stage(w, 2 * w)  # 1/4
        self.stage3 = _Stage(2 * w, 4 * w)  # 1/8
        self.stage4 = _Stage(4 * w, 6 * w)  # 1/16
        d = 2 * w
        self.lat2 = nn.Conv2d(2 * w, d, 1)
        self.lat3 = nn.Conv2d(4 * w, d, 1)
        self.lat4 = nn.Conv2d(6 * w, d, 1)
        self.smooth3 = _conv_bn(d, d)
        self.smooth2 = nn.Sequential(_conv_bn(d, d), _conv_bn(d, d))
        self.heatmap = nn.Conv2d(d, k, 1)
        self.visibility = nn.Linear(6 * w, k)
        # Most landmarks are visible in the training renders: start the visibility head there.
        nn.init.zeros_(self.visibility.weight)
        nn.init.constant_(self.visibility.bias, 2.0)
        cells = self.input_size // HEATMAP_STRIDE
        centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * HEATMAP_STRIDE - 0.5
        self.register_buffer("centres", centres, persistent=False)

    @property
    def num_landmarks(self) -> int:
        return len(self.landmark_names)

    def heatmaps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits [N,K,S/4,S/4] and visibility logits [N,K]."""
        c2 = self.stage2(self.stage1(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        p = self.lat4(c4)
        p = self.smooth3(self.lat3(c3) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        p = self.smooth2(self.lat2(c2) + F.interpolate(p, scale_factor=2.0, mode="nearest"))
        return self.heatmap(p), self.visibility(c4.mean(dim=(2, 3)))

    def soft_argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Heatmap logits [N,K,h,w] -> expected position [N,K,2] (x, y) in input pixels."""
        n, k, h, w = logits.shape
        prob = torch.softmax(logits.float().reshape(n, k, h * w), dim=-1).reshape(n, k, h, w)
        x_coord = (prob.sum(dim=2) * self.centres[:w]).sum(dim=-1)
        y_coord = (prob.sum(dim=3) * self.centres[:h]).sum(dim=-1)
        return torch.stack([x_coord, y_coord], dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, vis = self.heatmaps(x)
        return self.soft_argmax(logits), vis.float()


@dataclass(frozen=True)
class Detection:
    """points [N,K,2] float32 (x, y) in pixels of the images passed in; visible [N,K] float32 in [0,1]."""

    points: np.ndarray
    visible: np.ndarray


def images_to_input(
    images: Any, input_size: int, device: torch.device | str
) -> tuple[torch.Tensor, int, int]:
    """uint8 [N,H,W,3] / [H,W,3] (numpy or torch), or float [N,3,H,W] in [-1,1] (a generator's output)
    -> float [N,3,S,S] in [-1,1] on `device`, plus the original H and W."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [N,H,W,3] or [H,W,3], got shape {tuple(images.shape)}")
        x = images.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    elif images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be [N,3,H,W] in [-1,1], got shape {tuple(images.shape)}")
        x = images.to(device=device, dtype=torch.float32)
    else:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 8 or w < 8:
        raise ValueError(f"images must be at least 8x8 px, got {h}x{w}")
    if (h, w) != (input_size, input_size):
        size = (input_size, input_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x, h, w


def input_to_image_points(points: torch.Tensor, input_size: int, height: int, width: int) -> torch.Tensor:
    """Points in input pixels -> points in pixels of an H×W image (pixel centres at integers)."""
    scale = torch.tensor([width / input_size, height / input_size], device=points.device)
    return (points + 0.5) * scale - 0.5


def detect_landmarks(model: LandmarkDetector, images: Any, batch_size: int = 64) -> Detection:
    """Landmarks of `images` (see `images_to_input` for the accepted forms), in their own pixels."""
    model_device = next(model.parameters()).device
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3:
        images = images[None]
    if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim != 4 or images.shape[0] == 0:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be a non-empty batch [N,H,W,3] or [N,3,H,W], got shape {shape}")
    was_training = model.training
    model.eval()
    points, visible = [], []
    try:
        with torch.no_grad():
            for a in range(0, int(images.shape[0]), batch_size):
                x, h, w = images_to_input(images[a : a + batch_size], model.input_size, model_device)
                p, v = model(x)
                p = input_to_image_points(p, model.input_size, h, w)
                p[..., 0].clamp_(0, w - 1)
                p[..., 1].clamp_(0, h - 1)
                points.append(p.cpu())
                visible.append(torch.sigmoid(v).cpu())
    finally:
        model.train(was_training)
    return Detection(torch.cat(points).numpy(), torch.cat(visible).numpy())


def save_detector(
    model: LandmarkDetector,
    path: str | Path,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the weights (floats cast to `dtype`) with the architecture and `extra` in the metadata."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.init_kwargs, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    save_file(tensors, str(path), metadata=meta)


def read_detector_metadata(path: str | Path) -> dict[str, Any]:
    """{'config': ..., 'extra': ...} of a detector file, without loading the weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LandmarkFileError(f"{path}: no such landmark-detector file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise LandmarkFileError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT_NAME:
        raise LandmarkFileError(
            f"{path}: not a krita-draggan landmark detector (format={meta.get('format')!r}); "
            "make one with `draggan train-landmarks`"
        )
    try:
        return {"config": json.loads(meta["config"]), "extra": json.loads(meta.get("extra", "{}"))}
    except (KeyError, json.JSONDecodeError) as e:
        raise LandmarkFileError(f"{path}: damaged metadata ({e})") from e


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> LandmarkDetector:
    """Build the detector from the file's metadata and load its weights (as fp32, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_detector_metadata(path)
    try:
        model = LandmarkDetector(**meta["config"])
    except (TypeError, ValueError) as e:
        raise LandmarkFileError(f"{path}: invalid detector config ({e})") from e
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LandmarkFileError(f"{path}: truncated or corrupt weights ({e})") from e
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise LandmarkFileError(f"{path}: weights do not match the config ({e})"[:500]) from None
    if missing or unexpected:
        raise LandmarkFileError(
            f"{path}: weights do not match the config (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )
    return model.eval().requires_grad_(False).to(device)
