"""StyleGAN2 losses, as NVIDIA's `StyleGAN2Loss`: non-saturating logistic loss, lazy R1 and
path-length regularisation, style mixing.

Each phase method runs its forward passes, calls backward (scaled by `gain`, the lazy
regularisation interval) and returns detached loss tensors for logging; it never reads a
value back to the host, so the training loop stays free of device syncs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..networks import Generator
from .augment import AugmentPipe
from .discriminator import Discriminator, fp32_region


@dataclass(frozen=True)
class LossConfig:
    r1_gamma: float = 1.0
    style_mixing_prob: float = 0.9
    pl_weight: float = 0.0  # 0 disables path-length regularisation (NVIDIA's stylegan2 config uses 2)
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01

    def validate(self) -> None:
        if self.r1_gamma < 0:
            raise ValueError(f"R1 gamma must be >= 0, got {self.r1_gamma}")
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise ValueError(f"style mixing probability must be in [0, 1], got {self.style_mixing_prob}")
        if self.pl_weight < 0 or self.pl_batch_shrink < 1 or not 0.0 < self.pl_decay <= 1.0:
            raise ValueError("path length: weight >= 0, batch shrink >= 1 and decay in (0, 1] required")


class StyleGAN2Loss:
    """Phases: g_main, g_pl (lazy, every G reg interval), d_main, d_r1 (lazy, every D reg interval).

    `amp_dtype` (e.g. torch.bfloat16) runs synthesis and the discriminator blocks under autocast;
    the mapping network and the discriminator epilogue always run in fp32.
    """

    def __init__(
        self,
        G: Generator,
        D: Discriminator,
        augment: AugmentPipe,
        cfg: LossConfig,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        cfg.validate()
        self.G = G
        self.D = D
        self.augment = augment
        self.cfg = cfg
        self.amp_dtype = amp_dtype
        self.device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=self.device)

    def _amp(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run_G(self, z: torch.Tensor, update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (image in fp32, the ws it was made from, after style mixing)."""
        with fp32_region(self.device.type):
            ws = self.G.mapping(z, None, update_emas=update_emas)
            if self.cfg.style_mixing_prob > 0:
                num_ws = ws.shape[1]
                # Same draws as NVIDIA's, but as a mask instead of ws[:, cutoff:] (which would sync).
                cutoff = torch.randint(1, num_ws, [], device=ws.device)
                mix = torch.rand([], device=ws.device) < self.cfg.style_mixing_prob
                cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
                ws_mix = self.G.mapping(torch.randn_like(z), None, update_emas=False)
                later = torch.arange(num_ws, device=ws.device)[None, :, None] >= cutoff
                ws = torch.where(later, ws_mix, ws)
        with self._amp():
            img = self.G.synthesis(ws, update_emas=update_emas)
        return img.to(torch.float32), ws

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        img = self.augment(img)
        with self._amp():
            return self.D(img).to(torch.float32)

    def g_main(self, z: torch.Tensor) -> torch.Tensor:
        img, _ = self.run_G(z)
        loss = F.softplus(-self.run_D(img)).mean()
        loss.backward()
        return loss.detach()

    def g_pl(self, z: torch.Tensor, gain: float) -> torch.Tensor:
        batch = max(z.shape[0] // self.cfg.pl_batch_shrink, 1)
        img, ws = self.run_G(z[:batch])
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.square().sum(2).mean(1).sqrt()
        pl_mean = self.pl_mean.lerp(lengths.mean(), self.cfg.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        penalty = (lengths - pl_mean).square().mean()
        (penalty * self.cfg.pl_weight * gain).backward()
        return penalty.detach()

    def d_main(self, z: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fake, _ = self.run_G(z, update_emas=True)
        loss_fake = F.softplus(self.run_D(fake)).mean()
        loss_fake.backward()
        real_logits = self.run_D(real)
        self.augment.observe(real_logits)
        loss_real = F.softplus(-real_logits).mean()
        loss_real.backward()
        return loss_fake.detach(), loss_real.detach()

    def d_r1(self, real: torch.Tensor, gain: float) -> torch.Tensor:
        real = real.detach().requires_grad_(True)
        logits = self.run_D(real)
        (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grads.square().sum([1, 2, 3]).mean()
        (penalty * (self.cfg.r1_gamma / 2) * gain).backward()
        return penalty.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"pl_mean": float(self.pl_mean)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pl_mean.fill_(float(state["pl_mean"]))
