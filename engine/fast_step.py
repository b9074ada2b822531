"""Speed of the step: the forward without gradients for fixed W+ rows, CUDA-graph replay of the
step's compute (`compile="cudagraph"`), and autocast for the forward (`autocast`).

On a GPU the eager step is bound by kernel launches: the pure-PyTorch generator issues hundreds
of small kernels per step, each costing more host time than device time. Within a drag segment
the step's shapes are fixed (handle count, disc and window sizes, mask on or off), so its kernels
are captured once into a CUDA graph and then replayed with one launch. The graph reads the tensors
that existed at capture (the latent parameter, points, targets, templates, F0, mask weight); the
session updates those in place between replays and drops the graph when any of them is replaced
or a parameter baked into it changes. The Adam update stays outside the graph: it is skipped once
the stop rule holds, which is known only after the step's one host transfer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from .errors import DragInputError

T = TypeVar("T")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GRAPH_WARMUP_STEPS = 2  # side-stream runs before capture (lazy init of cuDNN/cuBLAS handles, autograd)


def autocast_context(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """torch.autocast for "bf16"/"fp16", a no-op for "none". The cast cache is off: it must be
    inside a CUDA graph capture, and the generator's weights (no grad) never use it anyway."""
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[mode], cache_enabled=False)


_STREAMS: dict[tuple[str, int | None, int], torch.cuda.Stream] = {}


def reused_stream(device: torch.device, purpose: str) -> torch.cuda.Stream:
    """One side stream per (purpose, device, thread), made once and reused.

    Never a new stream per session or per capture: cuBLAS keeps a workspace (~32–64 MiB on an H100)
    for every stream that ever ran a matrix product, for the life of the process, so a daemon that
    made a stream per drag grew by that much with every drag (measured: +65–130 MiB per session).
    Per thread, because two threads must not capture CUDA graphs on one stream at once.
    """
    key = (purpose, torch.device(device).index, threading.get_ident())
    stream = _STREAMS.get(key)
    if stream is None:
        stream = _STREAMS.setdefault(key, torch.cuda.Stream(device))
    return stream


def check_graph_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise DragInputError(
            f"compile='cudagraph' needs a CUDA device, but this session runs on {device}; use compile='none'"
        )


class GraphedCompute(Generic[T]):
    """`compute` (no side effects, fixed shapes) captured as a CUDA graph; calling replays it.

    The returned tensors are the graph's static outputs: the next call overwrites them, so the
    caller copies whatever it keeps beyond that.
    """

    def __init__(self, compute: Callable[[], T], device: torch.device, warmup: int = GRAPH_WARMUP_STEPS):
        check_graph_device(device)
        with torch.cuda.device(device):
            side = reused_stream(device, "capture")
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    compute()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
                self._outputs = compute()

    def __call__(self) -> T:
        self._graph.replay()
        return self._outputs


def features_with_fixed_tail(
    G: torch.nn.Module,
    head: torch.Tensor,
    base: torch.Tensor,
    stop_after: str,
    noise_mode: str,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """Output of block `stop_after` for W+ = cat(head, base[:, k:]), k = head's row count.

    The same values as G.synthesis(ws, stop_after=..., return_features=True), but each block reads
    its rows >= k straight from `base` (no grad) instead of slicing one tensor that requires grad.
    Autograd then never differentiates through the fixed rows' styles, so the backward skips the
    modulated-weight gradients of every layer that reads only fixed rows: at 512 px that is a third
    of the step's FLOPs (and their kernels). Gradients w.r.t. head are unchanged (up to the order
    of float additions).
    """
    synthesis = G.synthesis
    k = head.shape[1]
    x = img = None
    for name, (start, stop) in synthesis.block_ws_slices().items():
        if stop <= k:
            ws = head[:, start:stop]
        elif start >= k:
            ws = base[:, start:stop]
        else:
            ws = torch.cat([head[:, start:], base[:, k:stop]], dim=1)
        x, img = getattr(synthesis, name)(
            x, img, ws, want_img=False, noise_mode=noise_mode, fused_modconv=fused_modconv
        )
        if name == stop_after:
            return x
    raise ValueError(f"unknown block {stop_after!r}; this network has {synthesis.block_names()}")
