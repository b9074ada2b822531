"""The public reference code's drag step, re-implemented on our generator for `draggan bench speed`.

A faithful copy of what DragGAN's `viz/renderer.py` (`_render_drag_impl`, after its 2023-07-18 fix
that lets the shifted sample carry the gradient) does per step, so the benchmark compares our engine
with the formulation users run today, on the same model, latent and points:

- ws = cat(w[:, :6], w0[:, 6:]); the whole generator runs forward with gradients, image included;
- the feature map of the 6th block is upsampled to image size (F.interpolate, bilinear);
- per handle: tracking in a (2r2+1)² crop with an L2 norm over channels, argmin, and two `.item()`
  host syncs to turn the flat index into (row, col);
- per handle: a distance grid over the whole image, `torch.where` (a host sync) for the disc, a
  grid_sample (align_corners=True) of the upsampled map at the shifted pixels, F.l1_loss;
- mask: F.l1_loss of the full-resolution maps times M_fixed, times lambda; then backward and Adam.

Differences from the original, none affecting the cost: points come in and go out as (x, y) (the
reference keeps [row, col] internally, as here); the stop rule is optional (off for timing); the
uint8 image is made on the device each step as in the reference, but not copied to the host (the
reference GUI does copy it, so its real per-step cost is a little higher).

Quirk kept on purpose (`exact_grid=False`): the reference builds its distance grid with
`torch.linspace(0, h, h)`, whose i-th value is i·h/(h−1), not i; its disc Ω1 is therefore shifted
by up to one pixel toward the top-left, the most at the bottom-right of the image. `exact_grid=True`
uses the pixel indices instead, which is what the paper describes and what our engine does; the
cross-check against the engine uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

NUM_FREE_WS = 6  # the reference optimises W+ rows 0-5


@dataclass
class ReferenceStep:
    points: np.ndarray  # [N, 2] tracked (x, y) after this step's tracking
    loss: torch.Tensor  # 0-dim, on the device (reading it would add a host sync the reference lacks)
    stopped: bool  # the reference stop rule held (only evaluated when stop_rule=True)


class ReferenceDrag:
    """One drag in the reference formulation. Radii r1, r2 are in pixels of a 512 px image and are
    scaled as the reference does (round(r * h / 512)); lam is the mask weight."""

    def __init__(
        self,
        G: Any,
        latent: torch.Tensor,
        handles: Any,
        targets: Any,
        fixed_mask: np.ndarray | None = None,
        *,
        lr: float = 2e-3,
        lam: float = 20.0,
        r1: float = 3.0,
        r2: float = 12.0,
        reg: float = 0.0,
        noise_mode: str = "const",
        stop_rule: bool = False,
        exact_grid: bool = False,
    ) -> None:
        self.G = G
        self.device = next(G.parameters()).device
        self.h = self.w_res = int(G.img_resolution)
        w0 = torch.as_tensor(latent, dtype=torch.float32, device=self.device).reshape(1, G.num_ws, G.w_dim)
        self.w0 = w0.detach().clone()
        self.w = w0.detach().clone().requires_grad_(True)
        self.w_optim = torch.optim.Adam([self.w], lr=lr)
        self.points = [[round(float(y)), round(float(x))] for x, y in np.asarray(handles).reshape(-1, 2)]
        self.targets = [[round(float(y)), round(float(x))] for x, y in np.asarray(targets).reshape(-1, 2)]
        self.feature_name = G.feature_block_name(6)  # the reference's feat[5]
        self.lam, self.r1, self.r2, self.reg = lam, r1, r2, reg
        self.noise_mode = noise_mode
        self.stop_rule = stop_rule
        self.exact_grid = exact_grid
        self.mask = None
        if fixed_mask is not None:  # reference: 1 = must stay fixed; used only if it has 0s and 1s
            self.mask = torch.as_tensor(np.asarray(fixed_mask, dtype=np.float32))
        self.feat_refs: list[torch.Tensor] | None = None
        self.feat0_resize: torch.Tensor | None = None

    def latent(self) -> np.ndarray:
        """[num_ws, w_dim]: the W+ the next step will render (rows >= 6 from w0, as the reference)."""
        ws = torch.cat([self.w[:, :NUM_FREE_WS], self.w0[:, NUM_FREE_WS:]], dim=1)
        return ws[0].detach().cpu().numpy()

    def step(self) -> ReferenceStep:
        G, h, w = self.G, self.h, self.w_res
        ws = torch.cat([self.w[:, :NUM_FREE_WS], self.w0[:, NUM_FREE_WS:]], dim=1)
        img, feats = G.synthesis(ws, return_features=True, noise_mode=self.noise_mode)  # full forward
        feat = feats[self.feature_name]

        if self.exact_grid:
            X = torch.arange(h, dtype=torch.float32)
            Y = torch.arange(w, dtype=torch.float32)
        else:
            X = torch.linspace(0, h, h)
            Y = torch.linspace(0, w, w)
        xx, yy = torch.meshgrid(X, Y, indexing="ij")
        feat_resize = F.interpolate(feat, [h, w], mode="bilinear")
        if self.feat_refs is None:
            self.feat0_resize = F.interpolate(feat.detach(), [h, w], mode="bilinear")
            self.feat_refs = [self.feat0_resize[:, :, round(p[0]), round(p[1])] for p in self.points]

        points = self.points
        with torch.no_grad():  # point tracking, one handle at a time, two host syncs each
            r = round(self.r2 / 512 * h)
            for j, point in enumerate(points):
                up = max(point[0] - r, 0)
                down = min(point[0] + r + 1, h)
                left = max(point[1] - r, 0)
                right = min(point[1] + r + 1, w)
                feat_patch = feat_resize[:, :, up:down, left:right]
                L2 = torch.linalg.norm(feat_patch - self.feat_refs[j].reshape(1, -1, 1, 1), dim=1)
                _, idx = torch.min(L2.view(1, -1), -1)
                width = right - left
                points[j] = [idx.item() // width + up, idx.item() % width + left]

        loss_motion: Any = 0
        stop = True
        radius = round(self.r1 / 512 * h)
        for j, point in enumerate(points):  # motion supervision, one handle at a time
            target = self.targets[j]
            direction = torch.tensor([target[1] - point[1], target[0] - point[0]], dtype=torch.float32)
            if torch.linalg.norm(direction) > max(2 / 512 * h, 2):
                stop = False
            if torch.linalg.norm(direction) > 1:
                distance = (
                    (xx.to(self.device) - point[0]) ** 2 + (yy.to(self.device) - point[1]) ** 2
                ) ** 0.5
                relis, reljs = torch.where(distance < radius)
                direction = direction / (torch.linalg.norm(direction) + 1e-7)
                gridh = (relis + direction[1]) / (h - 1) * 2 - 1
                gridw = (reljs + direction[0]) / (w - 1) * 2 - 1
                grid = torch.stack([gridw, gridh], dim=-1).unsqueeze(0).unsqueeze(0)
                shifted = F.grid_sample(feat_resize.float(), grid, align_corners=True).squeeze(2)
                loss_motion = loss_motion + F.l1_loss(feat_resize[:, :, relis, reljs].detach(), shifted)

        loss = loss_motion
        if self.mask is not None and self.mask.min() == 0 and self.mask.max() == 1:
            mask_usq = self.mask.to(self.device).unsqueeze(0).unsqueeze(0)
            loss = loss + self.lam * F.l1_loss(feat_resize * mask_usq, self.feat0_resize * mask_usq)
        loss = loss + self.reg * F.l1_loss(ws, self.w0)  # latent regularisation (reg = 0 in the GUI)

        stopped = self.stop_rule and stop
        if not stopped:
            self.w_optim.zero_grad()
            loss.backward()
            self.w_optim.step()

        self.image = (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        xy = np.array([[p[1], p[0]] for p in points], dtype=np.float64)
        return ReferenceStep(xy, loss.detach(), stopped)
