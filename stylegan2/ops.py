"""Pure-PyTorch versions of StyleGAN2's low-level ops.

NVIDIA ships these as custom CUDA kernels that compile at start-up; failed builds are
the most common install failure of public DragGAN ports. These are the reference
formulations of the same ops, numerically matching NVIDIA's `_ref` code paths, so
weights trained with the CUDA kernels produce the same images on CPU, CUDA or MPS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .fir_matmul import upfirdn2d_matmul

# name -> (function, default gain)
_ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (torch.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
}


def activation_gain(name: str) -> float:
    return _ACTIVATIONS[name][1]


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias (along dim 1), activation, gain and optional clamp, as NVIDIA's bias_act."""
    fn, def_gain = _ACTIVATIONS[act]
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    x = fn(x)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(f: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """2D FIR filter from a 1D kernel (outer product), normalised to unit sum."""
    t = torch.as_tensor(f, dtype=torch.float32)
    if t.ndim == 1:
        t = torch.outer(t, t)
    if normalize:
        t = t / t.sum()
    return t


def _pad4(padding: int | Sequence[int]) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    p = list(padding)
    if len(p) == 2:
        return [p[0], p[0], p[1], p[1]]
    return p


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
    matmul: bool = False,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample. padding = [x0, x1, y0, y1].

    Differentiable to any order through `_UpFirDn`, whose backward is again an upfirdn (as in
    NVIDIA's CUDA op). Autograd's own double backward of a depthwise convolution would compute the
    filter's weight gradient as a convolution with image-sized kernels: R1 steps ran ~20x slower.
    `matmul=True` filters a separable f as two banded matrix products instead (fir_matmul; for
    inference on a frozen generator, where it is several times faster on a GPU).
    """
    pad = tuple(_pad4(padding))
    if f is not None and f.requires_grad:
        raise ValueError("upfirdn2d filters are constants; the filter must not require grad")
    if matmul and f is not None:
        y = upfirdn2d_matmul(x, f, up, down, pad, flip_filter, gain)
        if y is not None:
            return y
    if torch.is_grad_enabled() and x.requires_grad:
        return _UpFirDn.apply(x, f, up, down, pad, flip_filter, gain)
    return _upfirdn2d_forward(x, f, up, down, pad, flip_filter, gain)


class _UpFirDn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        f: torch.Tensor | None,
        up: int,
        down: int,
        pad: tuple[int, int, int, int],
        flip_filter: bool,
        gain: float,
    ) -> torch.Tensor:
        y = _upfirdn2d_forward(x, f, up, down, pad, flip_filter, gain)
        ctx.f, ctx.args, ctx.x_shape = f, (up, down, pad, flip_filter, gain), x.shape
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        up, down, (px0, _, py0, _), flip_filter, gain = ctx.args
        ih, iw = ctx.x_shape[2:]
        oh, ow = dy.shape[2:]
        fw, fh = _filter_size(ctx.f)
        pad = (
            fw - px0 - 1,
            iw * up - ow * down + px0 - up + 1,
            fh - py0 - 1,
            ih * up - oh * down + py0 - up + 1,
        )
        dx = upfirdn2d(dy, ctx.f, up=down, down=up, padding=pad, flip_filter=not flip_filter, gain=gain)
        return dx, None, None, None, None, None, None


def _upfirdn2d_forward(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int,
    down: int,
    padding: Sequence[int],
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """upfirdn2d's arithmetic without the literal recipe's wasted work: upsampling is a strided transposed
    convolution (no zeros are filtered), downsampling a strided convolution (no discarded outputs
    are computed), and a missing filter is only padding and gain. `reference_upfirdn2d` is the
    literal recipe; the two agree to float rounding (tests/test_ops.py).
    """
    padx0, padx1, pady0, pady1 = _pad4(padding)
    if f is None:
        x = F.pad(_zero_insert(x, up) if up > 1 else x, [padx0, padx1, pady0, pady1])
        x = x[:, :, ::down, ::down] if down > 1 else x
        return x * gain if gain != 1 else x
    channels = x.shape[1]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    g = f if flip_filter else f.flip(list(range(f.ndim)))  # correlation kernel
    if f.ndim == 1:  # separable: one pass per axis
        wx, wy = g[None, None, None, :], g[None, None, :, None]
    else:
        wx, wy = g[None, None], None
    wx = wx.repeat([channels, 1, 1, 1])
    wy = wy.repeat([channels, 1, 1, 1]) if wy is not None else None
    if up > 1:
        if wy is None:
            x = _up_filter(x, wx, (up, up), [padx0, padx1, pady0, pady1])
        else:
            x = _up_filter(x, wx, (1, up), [padx0, padx1, 0, 0])
            x = _up_filter(x, wy, (up, 1), [0, 0, pady0, pady1])
        return x[:, :, ::down, ::down] if down > 1 else x
    x = F.pad(x, [padx0, padx1, pady0, pady1])
    x = F.conv2d(x, wx, stride=down if wy is None else (1, down), groups=channels)
    if wy is not None:
        x = F.conv2d(x, wy, stride=(down, 1), groups=channels)
    return x


def _zero_insert(x: torch.Tensor, up: int) -> torch.Tensor:
    n, c, h, w = x.shape
    x = F.pad(x.reshape([n, c, h, 1, w, 1]), [0, up - 1, 0, 0, 0, up - 1])
    return x.reshape([n, c, h * up, w * up])


def _up_filter(x: torch.Tensor, g: torch.Tensor, up: tuple[int, int], pad: list[int]) -> torch.Tensor:
    """Zero-insert by up = (uy, ux), pad, correlate with g, as one transposed convolution.

    The transposed convolution's output index y' = i*up + k covers the zero-inserted, filtered
    signal shifted by K-1-pad0; cropping (negative pad) or zero-padding maps it onto upfirdn's frame.
    """
    kh, kw = g.shape[2:]
    uy, ux = up
    h, w = x.shape[2:]
    y = F.conv_transpose2d(x, g.flip([2, 3]), stride=(uy, ux), groups=x.shape[1])
    sx, sy = kw - 1 - pad[0], kh - 1 - pad[2]
    lx, ly = w * ux + pad[0] + pad[1] - kw + 1, h * uy + pad[2] + pad[3] - kh + 1
    # conv_transpose leaves out the trailing up-1 zeros of the last sample: y' spans (n-1)*up + K.
    return F.pad(y, [-sx, sx + lx - y.shape[3], -sy, sy + ly - y.shape[2]])


def reference_upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """The literal upfirdn recipe (NVIDIA's reference path); kept to check `upfirdn2d` against."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    channels = x.shape[1]
    padx0, padx1, pady0, pady1 = _pad4(padding)
    if up > 1:
        x = _zero_insert(x, up)
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0) : x.shape[2] - max(-pady1, 0), max(-padx0, 0) : x.shape[3] - max(-padx1, 0)]
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=channels)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=channels)
        x = F.conv2d(x, f.unsqueeze(3), groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return f.shape[-1], f.shape[0]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1) -> torch.Tensor:
    fw, fh = _filter_size(f)
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, gain: float = 1) -> torch.Tensor:
    fw, fh = _filter_size(f)
    p = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p, gain=gain)


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    kh, kw = w.shape[2:]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
    fir_matmul: bool = False,
) -> torch.Tensor:
    """2D convolution with optional up/downsampling, fused as NVIDIA's conv2d_resample.
    `fir_matmul`: filter as banded matrix products (see upfirdn2d)."""
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], matmul=fir_matmul)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up, matmul=fir_matmul)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], matmul=fir_matmul)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(
            x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight
        )
        pad = [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt]
        x = upfirdn2d(x, f, padding=pad, gain=up * up, matmul=fir_matmul)
        if down > 1:
            x = upfirdn2d(x, f, down=down, matmul=fir_matmul)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], matmul=fir_matmul)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, matmul=fir_matmul)
    return x


class FrozenModConvWeight:
    """What a modulated conv derives from its weight alone, computed once while the weight is frozen.

    `weight`: float32, pre-normalised when the activations are fp16 (NVIDIA's overflow guard);
    `weight_x`: the same in the activations' dtype (the split path's shared conv weight);
    `sq`: [out, in] Σ over taps of weight², so the demodulation coefficients of any styles are
    rsqrt(styles² @ sqᵀ): Σ_ik (w_oik s_i)² = Σ_i s_i² Σ_k w_oik². Without it every call forms
    and reduces a [batch, out, in, kh, kw] tensor (a third of a drag step's kernels).
    `scaled(g)` multiplies the demodulated output by g > 0 at no cost: rsqrt((a + ε) / g²) = g·rsqrt(a + ε).
    (A plain class, not a dataclass: this source is also exec'd outside any package, in exports.)
    """

    __slots__ = ("eps", "sq", "weight", "weight_x")

    def __init__(
        self, weight: torch.Tensor, weight_x: torch.Tensor, sq: torch.Tensor, eps: float = 1e-8
    ) -> None:
        self.weight = weight
        self.weight_x = weight_x
        self.sq = sq
        self.eps = eps

    def scaled(self, gain: float) -> FrozenModConvWeight:
        return FrozenModConvWeight(self.weight, self.weight_x, self.sq / gain**2, self.eps / gain**2)


def frozen_modconv_weight(weight: torch.Tensor, dtype: torch.dtype, demodulate: bool) -> FrozenModConvWeight:
    w = weight.detach().to(torch.float32)
    if dtype == torch.float16 and demodulate:
        w = _fp16_prenormalised(w)
    return FrozenModConvWeight(w, w.to(dtype), w.square().sum(dim=[2, 3]))


def _fp16_prenormalised(weight: torch.Tensor) -> torch.Tensor:
    _, in_channels, kh, kw = weight.shape
    peak = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
    return weight * (1 / math.sqrt(in_channels * kh * kw) / peak)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    frozen: FrozenModConvWeight | None = None,
) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation. Fused = one grouped conv for the whole batch.

    `frozen` (from `frozen_modconv_weight(weight, x.dtype, demodulate)`) replaces the per-call
    work on the weight; the result is the same function up to float rounding.
    """
    batch = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    prenormalise = x.dtype == torch.float16 and demodulate

    dcoefs = None
    if frozen is not None:
        weight = frozen.weight
        if prenormalise:
            styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
        if demodulate:
            dcoefs = (styles.square() @ frozen.sq.t() + frozen.eps).rsqrt()
        conv_weight = frozen.weight_x
    else:
        if prenormalise:
            weight = _fp16_prenormalised(weight)  # NVIDIA does the same
            styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
        if demodulate:
            w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        conv_weight = weight.to(x.dtype)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(
            x,
            conv_weight,
            f=resample_filter,
            up=up,
            padding=padding,
            flip_weight=flip_weight,
            fir_matmul=frozen is not None,
        )
        if dcoefs is not None and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        elif dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    scale = styles.reshape(batch, 1, -1, 1, 1)
    if dcoefs is not None:
        scale = scale * dcoefs.reshape(batch, -1, 1, 1, 1)
    w = (weight.unsqueeze(0) * scale).reshape(-1, in_channels, kh, kw)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        padding=padding,
        groups=batch,
        flip_weight=flip_weight,
        fir_matmul=frozen is not None,
    )
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
