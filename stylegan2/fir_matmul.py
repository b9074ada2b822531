"""upfirdn2d with a separable filter as two banded matrix products: y = A_y · x · A_xᵀ per channel.

The resampling filter of a generator is [1, 3, 3, 1] ⊗ [1, 3, 3, 1]. As a depthwise convolution on a
batch-1 feature map PyTorch runs it with a generic kernel (~55 µs on a 256×131×131 fp16 map on an
H100, the most expensive kernel of a drag step) after a padding copy. The same linear map, written
as matrices that fold in zero insertion, padding, cropping, flipping, gain and decimation, is two
tensor-core GEMMs and no copies; autograd differentiates it as two more. The matrices are mostly
zeros, so this pays only where launches and latency, not arithmetic, bound the work (inference on
a frozen generator); training keeps the convolution formulation in `ops`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch


class _FilterEntry:
    """A filter's factorisation and band matrices. `ref` is the filter tensor itself, so a new
    tensor at a freed one's address is a miss. (No dataclass: this source is also exec'd as part
    of exported pickles, outside any package.)"""

    def __init__(
        self, ref: weakref.ref, version: int, taps: tuple[torch.Tensor, torch.Tensor] | None
    ) -> None:
        self.ref = ref
        self.version = version
        self.taps = taps
        self.bands: dict[Any, torch.Tensor] = {}


_FILTERS: dict[int, _FilterEntry] = {}
_CONVOLUTION_FORM = [0]  # > 0 inside `convolution_form()`


@contextlib.contextmanager
def convolution_form() -> Iterator[None]:
    """Within: every upfirdn2d takes the convolution form. For FLOP counts, which should count the
    filter's own multiply-adds, not the products with the band matrices' zeros."""
    _CONVOLUTION_FORM[0] += 1
    try:
        yield
    finally:
        _CONVOLUTION_FORM[0] -= 1


def _entry(f: torch.Tensor) -> _FilterEntry | None:
    """The filter's cached factorisation; built (one host read) unless a CUDA graph is capturing."""
    key = id(f)
    entry = _FILTERS.get(key)
    if entry is not None and entry.ref() is f and entry.version == f._version:
        return entry
    if f.is_cuda and torch.cuda.is_current_stream_capturing():
        return None
    entry = _FilterEntry(weakref.ref(f, lambda _: _FILTERS.pop(key, None)), f._version, _factor(f))
    _FILTERS[key] = entry
    return entry


def separable_taps(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) with f = outer(a, b) (f[y, x] = a[y] b[x]), or None if f is not separable (or is new
    while a CUDA graph is being captured: the check reads f on the host, once per filter version).
    A 1-D f is NVIDIA's separable form (the same taps on both axes)."""
    entry = _entry(f)
    return None if entry is None else entry.taps


def _factor(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    f64 = f.detach().to(torch.float64)
    if f64.ndim == 1:
        return f64, f64
    a = f64.sum(dim=1)
    total = f64.sum()
    if total == 0:
        return None
    b = f64.sum(dim=0) / total
    return (a, b) if torch.allclose(torch.outer(a, b), f64, rtol=1e-6, atol=1e-9) else None


def band_matrix(taps: torch.Tensor, n_in: int, up: int, down: int, pad0: int, pad1: int) -> torch.Tensor:
    """[n_out, n_in] matrix of 1-D upfirdn (zero-insert by up, pad, correlate with taps, keep every
    down-th): y[m] = Σ_i A[m, i] x[i] with A[m, i] = taps[i·up + pad0 − m·down] where in range."""
    k = taps.shape[0]
    n_out = (n_in * up + pad0 + pad1 - k) // down + 1
    if n_out < 1:
        raise ValueError(
            f"upfirdn2d output would be empty (n_in={n_in}, up={up}, down={down}, pad={pad0},{pad1})"
        )
    m = torch.arange(n_out, device=taps.device)[:, None]
    i = torch.arange(n_in, device=taps.device)[None, :]
    idx = i * up + pad0 - m * down
    inside = (idx >= 0) & (idx < k)
    return torch.where(
        inside, taps[idx.clamp(0, k - 1)], torch.zeros((), dtype=taps.dtype, device=taps.device)
    )


def upfirdn2d_matmul(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
) -> torch.Tensor | None:
    """upfirdn2d(x, f, ...) for a separable f as two matrix products; None if f is not separable.

    padding = (x0, x1, y0, y1) as in ops.upfirdn2d (negative values crop).
    """
    if _CONVOLUTION_FORM[0]:
        return None
    entry = _entry(f)
    if entry is None or entry.taps is None:
        return None
    px0, px1, py0, py1 = padding
    ay = _band(entry, 0, x.shape[2], up, down, (py0, py1), flip_filter, gain ** (f.ndim / 2), x.dtype)
    bx = _band(entry, 1, x.shape[3], up, down, (px0, px1), flip_filter, gain ** ((2 - f.ndim) / 2), x.dtype)
    return torch.matmul(ay, torch.matmul(x, bx.t()))


def _band(
    entry: _FilterEntry,
    axis: int,
    n_in: int,
    up: int,
    down: int,
    pads: tuple[int, int],
    flip_filter: bool,
    scale: float,
    dtype: Any,
) -> torch.Tensor:
    """Axis 0 (rows, taps a) or 1 (columns, taps b); the 2-D gain goes on the rows only."""
    key = (axis, n_in, up, down, pads, flip_filter, scale, dtype)
    band = entry.bands.get(key)
    if band is None:
        taps = entry.taps[axis]
        if not flip_filter:  # upfirdn2d convolves: the correlation taps are the flipped filter
            taps = taps.flip(0)
        band = band_matrix(taps * scale, n_in, up, down, *pads).to(dtype)
        if not (taps.is_cuda and torch.cuda.is_current_stream_capturing()):
            entry.bands[key] = band
    return band
