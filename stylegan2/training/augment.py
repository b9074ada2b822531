"""Discriminator augmentation: per-sample x-flip and integer translation, applied to reals AND fakes.

Both ops are differentiable gathers, so generator gradients flow through them (DiffAugment),
and both are applied with probability `p` per sample, so with p < ~0.8 they do not leak into
the generated distribution (ADA). The adaptive mode tunes `p` with ADA's overfitting heuristic
r_t = E[sign(D(real))] against a target (0.6). Everything stays on the device: no host syncs.
"""

from __future__ import annotations

from typing import Any

import torch


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back into [0, size) (one reflection; shifts are < size)."""
    idx = idx.abs()
    return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)


def translate_integer(img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels, reflect padding. shift: [N, 2] int64 (dx, dy)."""
    n, c, h, w = img.shape
    iy = _reflect(torch.arange(h, device=img.device)[None, :] - shift[:, 1:2], h)  # [N, H]
    ix = _reflect(torch.arange(w, device=img.device)[None, :] - shift[:, 0:1], w)  # [N, W]
    img = img.gather(2, iy[:, None, :, None].expand(n, c, h, w))
    return img.gather(3, ix[:, None, None, :].expand(n, c, h, w))


class AugmentPipe:
    """x-flip + integer translation (up to `translate` x size), each with probability p per sample.

    p is a 0-dim tensor on the training device. `adaptive=True` enables the ADA controller:
    call `observe(real_logits)` on the discriminator's real-image logits each step and
    `adjust(batch_size)` every step; every `interval` steps p moves by
    sign(r_t - target) * batch * interval / (speed_kimg * 1000), clamped to [0, 1].
    """

    def __init__(
        self,
        p: float = 0.0,
        adaptive: bool = False,
        target: float = 0.6,
        speed_kimg: float = 100.0,
        interval: int = 4,
        translate: float = 0.125,
        xflip: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
        if not 0.0 < target < 1.0:
            raise ValueError(f"ADA target must be in (0, 1), got {target}")
        if interval < 1 or speed_kimg <= 0:
            raise ValueError("ADA interval must be >= 1 and speed_kimg > 0")
        if not 0.0 <= translate < 0.5:
            raise ValueError(f"translate must be in [0, 0.5), got {translate}")
        self.adaptive = adaptive
        self.target = target
        self.speed_kimg = speed_kimg
        self.interval = interval
        self.translate = translate
        self.xflip = xflip
        self.device = torch.device(device)
        self.p = torch.tensor(float(p), dtype=torch.float32, device=self.device)
        self._sign_sum = torch.zeros([], dtype=torch.float32, device=self.device)
        self._count = torch.zeros([], dtype=torch.float32, device=self.device)
        self._steps = 0
        # A fixed p of 0 is a no-op that draws no random numbers (decided here: reading p later syncs).
        self.active = adaptive or p > 0

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return img
        n, _, h, w = img.shape
        p = self.p.to(img.device)
        if self.xflip:
            flip = torch.rand([n, 1, 1, 1], device=img.device) < p
            img = torch.where(flip, img.flip(3), img)
        if self.translate > 0:
            on = (torch.rand([n, 1], device=img.device) < p).to(torch.int64)
            u = torch.rand([n, 2], device=img.device) * 2 - 1  # no torch.tensor(...): a host copy would sync
            shift = torch.stack([u[:, 0] * round(w * self.translate), u[:, 1] * round(h * self.translate)], 1)
            img = translate_integer(img, shift.round().to(torch.int64) * on)
        return img

    def observe(self, real_logits: torch.Tensor) -> None:
        if self.adaptive:
            self._sign_sum += real_logits.detach().sign().sum().to(torch.float32)
            self._count += real_logits.shape[0]

    def adjust(self, batch_size: int) -> None:
        if not self.adaptive:
            return
        self._steps += 1
        if self._steps % self.interval:
            return
        rt = self._sign_sum / self._count.clamp(min=1)
        step = batch_size * self.interval / (self.speed_kimg * 1000)
        self.p.copy_((self.p + torch.sign(rt - self.target) * step).clamp(0.0, 1.0))
        self._sign_sum.zero_()
        self._count.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": float(self.p),
            "sign_sum": float(self._sign_sum),
            "count": float(self._count),
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p.fill_(float(state["p"]))
        self._sign_sum.fill_(float(state["sign_sum"]))
        self._count.fill_(float(state["count"]))
        self._steps = int(state["steps"])
