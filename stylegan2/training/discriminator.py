"""StyleGAN2 discriminator (resnet architecture), name-compatible with NVIDIA's `networks_stylegan2.py`.

Module and parameter names match NVIDIA's (`b{res}.fromrgb/conv0/conv1/skip`,
`b4.mbstd/conv/fc/out`), so an NVIDIA snapshot's `D` state_dict loads by name and our
checkpoints read like theirs. Layers and ops come from `stylegan2.networks` / `stylegan2.ops`.

Precision: blocks at the top `num_fp16_res` resolutions run in fp16 on CUDA (NVIDIA's recipe,
with `conv_clamp`); the epilogue always runs in fp32, also under autocast, as NVIDIA's does.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ..networks import Conv2dLayer, FullyConnectedLayer, MappingNetwork
from ..ops import downsample2d, setup_filter

ARCHITECTURES = ("orig", "skip", "resnet")


def fp32_region(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Turns autocast off inside (where autocast exists: CUDA and CPU)."""
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class DiscriminatorBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
        resample_filter = resample_filter or [1, 3, 3, 1]
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, kernel_size=1, activation=activation, conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp
        )
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=3,
            activation=activation,
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                tmp_channels, out_channels, kernel_size=1, bias=False, down=2, resample_filter=resample_filter
            )

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ref = x if x is not None else img
        if ref.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        fmt = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if x is not None:
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=fmt)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends the per-group stddev of the features; groups are strided (sample i is in group i % n)."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch-std group size {g} must divide the batch size {n}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (
            MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        # Always fp32, also inside an autocast region: the logits feed the loss and the R1 gradient.
        with fp32_region(x.device.type):
            x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            if self.architecture == "skip":
                x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
            if self.mbstd is not None:
                x = self.mbstd(x)
            x = self.conv(x)
            x = self.fc(x.flatten(1))
            x = self.out(x)
            if self.cmap_dim > 0:
                x = (x * cmap.to(torch.float32)).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """Image [N, C, H, W] in [-1, 1] (+ labels c if c_dim > 0) -> logits [N, 1]."""

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        cmap_dim: int | None = None,
        block_kwargs: dict[str, Any] | None = None,
        mapping_kwargs: dict[str, Any] | None = None,
        epilogue_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
        self.init_kwargs: dict[str, Any] = {
            "c_dim": c_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "architecture": architecture,
            "channel_base": channel_base,
            "channel_max": channel_max,
            "num_fp16_res": num_fp16_res,
            "conv_clamp": conv_clamp,
            "cmap_dim": cmap_dim,
            "block_kwargs": dict(block_kwargs or {}),
            "mapping_kwargs": dict(mapping_kwargs or {}),
            "epilogue_kwargs": dict(epilogue_kwargs or {}),
        }
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in [*self.block_resolutions, 4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim
        common = {"img_channels": img_channels, "architecture": architecture, "conv_clamp": conv_clamp}
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0,
                channels[res],
                channels[res // 2],
                resolution=res,
                use_fp16=res >= fp16_resolution,
                **(block_kwargs or {}),
                **common,
            )
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **(mapping_kwargs or {})
            )
        self.b4 = DiscriminatorEpilogue(
            channels[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}), **common
        )

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, **block_kwargs: Any) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(
                f"D expects images of shape [N, {', '.join(map(str, expected))}], got {list(img.shape)}"
            )
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(
                    f"this discriminator is class-conditional: c must have shape [N, {self.c_dim}]"
                )
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)
