"""StyleGAN2 generator, architecture- and name-compatible with NVIDIA's PyTorch code.

Module, parameter and buffer names follow NVIDIA's `networks_stylegan2.py` exactly so an
official state_dict loads by name; constructor keyword arguments are the same too, so a
pickle's recorded `init_kwargs` rebuild the network. Everything is pure PyTorch.

Additions over NVIDIA's code (the drag engine needs them): the synthesis network can
stop after a named block and return every block's features, without paying for the
larger blocks after it.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from .ops import (
    FrozenModConvWeight,
    activation_gain,
    bias_act,
    conv2d_resample,
    frozen_modconv_weight,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("const", "random", "none")


class FrozenConstants:
    """Per-dtype cache of what a layer derives from its parameters alone, used while they are frozen.

    A drag step runs the same layers hundreds of times with weights that never change; deriving
    the demodulation sums, fp16 weight copies, bias casts and constant noise once removes most of
    the step's small kernels. The cache is keyed by each source tensor's storage and version
    counter, so moving, reloading or editing a weight in place invalidates it. Nothing is cached
    while a weight requires grad (training) or while a CUDA graph is being captured (the tensors
    would live in the graph's private memory pool).
    """

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[tuple, Any]] = {}

    def get(self, sources: list[torch.Tensor], tag: Any, make: Any) -> Any:
        """make()'s value for `tag` (a dtype, or a tuple starting with one), made again when a source
        tensor was replaced or edited; None while any source requires grad."""
        if any(t.requires_grad for t in sources):
            return None
        key = tuple((t.device, t.data_ptr(), t._version) for t in sources)
        hit = self._entries.get(tag)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = make()
        if not (sources[0].is_cuda and torch.cuda.is_current_stream_capturing()):
            self._entries[tag] = (key, value)
        return value


_FROZEN: weakref.WeakKeyDictionary[nn.Module, FrozenConstants] = weakref.WeakKeyDictionary()


def frozen_constants_nbytes(model: nn.Module) -> int:
    """Bytes held by the caches of `model`'s layers beyond its own parameters and buffers."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: set[int] = set()
    total = 0

    def walk(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            ptr = value.untyped_storage().data_ptr()
            if ptr not in own and ptr not in seen:
                seen.add(ptr)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, FrozenModConvWeight):
            walk([value.weight, value.weight_x, value.sq])

    for module in model.modules():
        cache = _FROZEN.get(module)
        if cache is not None:
            for _, value in cache._entries.values():
                walk(value)
    return total


def frozen_constants(module: nn.Module) -> FrozenConstants:
    """The module's cache, held outside it so that state dicts, pickles and exports never see it."""
    cache = _FROZEN.get(module)
    if cache is None:
        cache = _FROZEN.setdefault(module, FrozenConstants())
    return cache


class FullyConnectedLayer(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this model is class-conditional: c must have shape [N, {self.c_dim}]")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


_LayerConstants = tuple[FrozenModConvWeight, torch.Tensor]  # weight, bias
_FoldedConstants = tuple[FrozenModConvWeight, torch.Tensor, torch.Tensor | None]  # weight·gain, offset, bias
_POSITIVELY_HOMOGENEOUS = ("linear", "relu", "lrelu")  # act(g·x) = g·act(x) for g > 0
_MAX_FOLDED_OFFSET = 2**22  # values of a [C, H, W] noise + bias offset worth caching (8 MiB in fp16)


class SynthesisLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter or [1, 3, 3, 1]))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def _frozen(self, dtype: torch.dtype) -> _LayerConstants | None:
        """The weight's constants and the bias cast, where `_folded` does not apply (random noise)."""

        def make() -> _LayerConstants:
            return frozen_modconv_weight(self.weight, dtype, True), self.bias.to(dtype)

        return frozen_constants(self).get([self.weight, self.bias], dtype, make)

    def _folded(self, dtype: torch.dtype, noise_mode: str, act_gain: float) -> _FoldedConstants | None:
        """Frozen constants with the activation gain folded into the demodulation and the constant
        noise and bias into one offset: act(x·d + n + b)·g = act(x·(d·g) + (n + b)·g) for g > 0, so
        bias_act is the activation and clamp alone (two kernels fewer per layer forward, one
        backward). The offset is [C, H, W] where that is small (the drag step's layers); larger
        layers keep the bias as a separate add. None where the fold does not apply."""
        if noise_mode == "random" or act_gain <= 0 or self.activation not in _POSITIVELY_HOMOGENEOUS:
            return None
        noisy = self.use_noise and noise_mode == "const"
        sources = [self.weight, self.bias, *([self.noise_const, self.noise_strength] if noisy else [])]

        def make() -> _FoldedConstants:
            modconv = frozen_modconv_weight(self.weight, dtype, True).scaled(act_gain)
            bias = (self.bias * act_gain).reshape(-1, 1, 1)
            if not noisy:
                return modconv, bias.to(dtype), None
            noise = self.noise_const * self.noise_strength * act_gain
            if self.out_channels * noise.numel() <= _MAX_FOLDED_OFFSET:
                return modconv, (noise + bias).to(dtype), None
            return modconv, noise.to(dtype), bias.to(dtype)

        return frozen_constants(self).get(sources, (dtype, noise_mode, act_gain), make)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1,
    ) -> torch.Tensor:
        styles = self.affine(w)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        folded = self._folded(x.dtype, noise_mode, act_gain)
        if folded is not None:  # the gain is in the demodulation, noise and bias in the offset
            modconv, noise, bias = folded
            gain_after = 1.0
        else:
            frozen = self._frozen(x.dtype)
            modconv = frozen[0] if frozen is not None else None
            bias = frozen[1] if frozen is not None else self.bias.to(x.dtype)
            gain_after = act_gain
            noise = None
            if self.use_noise and noise_mode == "random":
                noise = (
                    torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                    * self.noise_strength
                )
            elif self.use_noise and noise_mode == "const":
                noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
            frozen=modconv,
        )
        return bias_act(x, bias, act=self.activation, gain=gain_after, clamp=act_clamp)


class ToRGBLayer(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        frozen = frozen_constants(self).get(
            [self.weight, self.bias],
            x.dtype,
            lambda: (frozen_modconv_weight(self.weight, x.dtype, False), self.bias.to(x.dtype)),
        )
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=False,
            fused_modconv=fused_modconv,
            frozen=frozen[0] if frozen is not None else None,
        )
        bias = frozen[1] if frozen is not None else self.bias.to(x.dtype)
        return bias_act(x, bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Plain conv with optional resampling (the resnet skip path; the discriminator)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter or [1, 3, 3, 1]))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = activation_gain(activation)
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            if b is not None:
                self.register_buffer("bias", b)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)


class SynthesisBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = 256,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        fused_modconv_default: bool | str = True,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown architecture {architecture!r}; expected 'orig', 'skip' or 'resnet'")
        resample_filter = resample_filter or [1, 3, 3, 1]
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        if in_channels != 0:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                **layer_kwargs,
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels,
            out_channels,
            w_dim=w_dim,
            resolution=resolution,
            conv_clamp=conv_clamp,
            **layer_kwargs,
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels, out_channels, kernel_size=1, bias=False, up=2, resample_filter=resample_filter
            )

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        want_img: bool = True,
        noise_mode: str = "random",
        update_emas: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`want_img=False` skips the RGB path (features do not depend on it)."""
        w_iter = iter(ws.unbind(dim=1))
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
            if fused_modconv == "inference_only":
                fused_modconv = not self.training

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        elif self.architecture == "resnet":
            x = x.to(dtype)
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(
                x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, gain=np.sqrt(0.5)
            )
            x = y + x
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if not want_img:
            return x, None
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_channels,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                use_fp16=res >= fp16_resolution,
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def block_names(self) -> list[str]:
        return [f"b{res}" for res in self.block_resolutions]

    def block_ws_slices(self) -> dict[str, tuple[int, int]]:
        """W+ index range [start, stop) each block reads (torgb shares the next block's first w)."""
        out: dict[str, tuple[int, int]] = {}
        idx = 0
        for name in self.block_names():
            block = getattr(self, name)
            out[name] = (idx, idx + block.num_conv + block.num_torgb)
            idx += block.num_conv
        return out

    def forward(
        self,
        ws: torch.Tensor,
        stop_after: str | None = None,
        return_features: bool = False,
        **block_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Run the blocks in order.

        stop_after: name of the last block to run (e.g. "b128"); later blocks cost nothing.
        return_features: also return {block name: block output x}; with stop_after set
        the RGB path is skipped entirely and the image returned is None.
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        names = self.block_names()
        if stop_after is not None and stop_after not in names:
            raise ValueError(f"unknown block {stop_after!r}; this network has {names}")
        noise_mode = block_kwargs.get("noise_mode", "random")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        want_img = stop_after is None
        ws = ws.to(torch.float32)
        slices = self.block_ws_slices()
        x = img = None
        features: dict[str, torch.Tensor] = {}
        for name in names:
            block = getattr(self, name)
            start, stop = slices[name]
            x, img = block(x, img, ws[:, start:stop], want_img=want_img, **block_kwargs)
            features[name] = x
            if name == stop_after:
                break
        if return_features:
            return img, features
        if img is None:
            raise ValueError("stop_after without return_features produces no output")
        return img


class Generator(nn.Module):
    """Mapping + synthesis; accepts both the StyleGAN3-repo flat kwargs and ADA's nested ones."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        synthesis_kwargs: dict[str, Any] | None = None,
        **synthesis_kwargs2: Any,
    ) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = {**(synthesis_kwargs or {}), **synthesis_kwargs2}
        self.init_kwargs: dict[str, Any] = {
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "mapping_kwargs": mapping_kwargs,
            **synthesis_kwargs,
        }
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs
        )

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)

    def feature_block_name(self, index: int = 6) -> str:
        """Name of the `index`-th synthesis block, 1-based (DragGAN uses the 6th: b128 at >= 256 px)."""
        names = self.synthesis.block_names()
        return names[min(index, len(names)) - 1]


def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """The reference convention: np.random.RandomState(seed).randn(1, z_dim), as float32."""
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return torch.from_numpy(np.random.RandomState(int(seed)).randn(1, z_dim)).to(torch.float32)


def to_uint8_image(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8, the reference rounding (x*127.5+128, clamp)."""
    u8 = (img.detach().permute(0, 2, 3, 1).to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return u8.cpu().numpy()
