"""Drag parameters, with the method's defaults (docs/engine.md, shared/docs/method.md)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import DragInputError

SPACES = ("w+", "w")
TRACKING_METRICS = ("l1", "l2")
NOISE_MODES = ("const", "random", "none")
COMPILE_MODES = ("none", "cudagraph")
AUTOCAST_MODES = ("none", "bf16", "fp16")
MODCONV_MODES = ("fused", "split")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DragParams:
    """Options of one drag. Lengths are in pixels of the model's image unless said otherwise.

    space: "w+" optimises each of the first `num_layers` ws separately; "w" optimises one
        offset shared by them (equal to optimising one shared w for a seed latent).
    num_layers: W+ indices [0, num_layers) are optimised; the rest stay fixed.
    tracking: point-tracking distance over channels, "l1" (paper) or "l2" (reference code).
    r1: motion-supervision disc radius; None = 3 * res / 512.
    r2: tracking half-window; None = max(1, round(12 * res / 512)).
    lam: weight of the mask term (only used with a mask).
    lr: Adam step size (paper: 2e-3 for FFHQ/AFHQ-Cat/LSUN-Car models, 1e-3 for others).
    stop_distance: done when every handle is within it of its target; None = 1 px for
        <= 5 handles, else 2 px (paper). Below 1 px, handles keep their motion loss down to it
        (0 never stops while a handle is off its target, as the speed benchmark wants).
    feature_block: 1-based synthesis block whose output is F (6 = b128 at >= 256 px;
        clamped to the last block for smaller models).
    nearest / nearest_radius / nearest_rate: seed 004's "Nearest" handle pre-adjustment;
        the radius R3 is in pixels of a 512 px image and scales with resolution.
    noise_mode: StyleGAN2 noise inputs ("const" keeps the image reproducible).
    compile: "none" (eager PyTorch) or "cudagraph" (CUDA only: the step's fixed-shape forward,
        tracking, losses and gradient are captured once and replayed; same numbers as eager).
    autocast: "none", "bf16" or "fp16": run the forward to the feature block under torch.autocast
        (faster matrix work, slightly different trajectory).
    modconv: how the modulated convolutions run: "fused" (NVIDIA's default: per-sample weights,
        one grouped conv) or "split" (scale the input by the styles, one shared-weight conv, scale
        the output by the demodulation coefficients; the same function, and its backward needs
        no weight-gradient convolution). Several sessions stepped as one batch use one setting.
    """

    space: str = "w+"
    num_layers: int = 6
    tracking: str = "l1"
    r1: float | None = None
    r2: int | None = None
    lam: float = 20.0
    lr: float = 2e-3
    stop_distance: float | None = None
    feature_block: int = 6
    nearest: bool = False
    nearest_radius: float = 40.0
    nearest_rate: float = 0.8
    noise_mode: str = "const"
    compile: str = "none"
    autocast: str = "none"
    modconv: str = "fused"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DragInputError naming the first invalid field, its value and the valid range."""
        if self.space not in SPACES:
            raise DragInputError(f"space must be one of {SPACES}, got {self.space!r}")
        if not _is_int(self.num_layers) or self.num_layers < 1:
            raise DragInputError(f"num_layers must be an integer >= 1, got {self.num_layers!r}")
        if self.tracking not in TRACKING_METRICS:
            raise DragInputError(f"tracking must be one of {TRACKING_METRICS}, got {self.tracking!r}")
        if self.r1 is not None and (not _is_real(self.r1) or self.r1 <= 0):
            raise DragInputError(f"r1 must be a finite number > 0 (pixels) or None, got {self.r1!r}")
        if self.r2 is not None and (not _is_int(self.r2) or self.r2 < 1):
            raise DragInputError(f"r2 must be an integer >= 1 (pixels) or None, got {self.r2!r}")
        if not _is_real(self.lam) or self.lam < 0:
            raise DragInputError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise DragInputError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.stop_distance is not None and (not _is_real(self.stop_distance) or self.stop_distance < 0):
            raise DragInputError(
                f"stop_distance must be a finite number >= 0 (pixels) or None, got {self.stop_distance!r}"
            )
        if not _is_int(self.feature_block) or self.feature_block < 1:
            raise DragInputError(
                f"feature_block must be an integer >= 1 (1-based), got {self.feature_block!r}"
            )
        if not isinstance(self.nearest, bool):
            raise DragInputError(f"nearest must be True or False, got {self.nearest!r}")
        if not _is_real(self.nearest_radius) or self.nearest_radius <= 0:
            raise DragInputError(f"nearest_radius must be a finite number > 0, got {self.nearest_radius!r}")
        if not _is_real(self.nearest_rate) or not 0 <= self.nearest_rate <= 1:
            raise DragInputError(f"nearest_rate must be a number in [0, 1], got {self.nearest_rate!r}")
        if self.noise_mode not in NOISE_MODES:
            raise DragInputError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.compile not in COMPILE_MODES:
            raise DragInputError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise DragInputError(f"autocast must be one of {AUTOCAST_MODES}, got {self.autocast!r}")
        if self.modconv not in MODCONV_MODES:
            raise DragInputError(f"modconv must be one of {MODCONV_MODES}, got {self.modconv!r}")

    def replace(self, **changes: Any) -> DragParams:
        """A copy with some fields changed (validated); unknown names are an error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise DragInputError(f"unknown drag parameter(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    # Values that depend on the model resolution / handle count.
    def r1_px(self, resolution: int) -> float:
        return float(self.r1) if self.r1 is not None else 3.0 * resolution / 512

    def r2_px(self, resolution: int) -> int:
        return int(self.r2) if self.r2 is not None else max(1, round(12 * resolution / 512))

    def stop_px(self, num_handles: int) -> float:
        if self.stop_distance is not None:
            return float(self.stop_distance)
        return 1.0 if num_handles <= 5 else 2.0

    def nearest_radius_px(self, resolution: int) -> float:
        return float(self.nearest_radius) * resolution / 512


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
