"""Preview frames rendered off the drag's path: on their own CUDA stream, optionally as a graph.

A preview is a full synthesis forward plus a resize, as much GPU work as a drag step at 512 px.
Rendered on the step's stream and read back at once, it stalls the step loop twice: the GPU
runs it instead of the next step, and the host waits for it. Here the frame is rendered on a
side stream that only waits for the latent it shows, copied into pinned host memory
asynchronously, and read back by whoever calls `PendingImage.result()` (the daemon's encoder
thread), so the compute thread goes straight on to the next step and the GPU overlaps both.
With `graphed` the side stream replays a CUDA graph of the render per output size (one launch
instead of hundreds), captured at a size's second frame: the first frame of a drag is the one the
artist waits for, and capturing costs several renders' time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .fast_step import reused_stream


def pixels(G: Any, ws: torch.Tensor, size: int | None, noise_mode: str) -> torch.Tensor:
    """[H, W, 3] uint8 image of ws [1, num_ws, w_dim] on the device (the reference rounding)."""
    img = G.synthesis(ws, noise_mode=noise_mode)
    if size is not None and size != img.shape[-1]:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (img[0].permute(1, 2, 0).to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class PendingImage:
    """An H×W×3 uint8 frame on its way to host memory; `result()` waits for it."""

    def __init__(self, host: torch.Tensor | np.ndarray, event: torch.cuda.Event | None = None) -> None:
        self._host = host
        self._event = event

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        host = self._host
        return host.numpy() if isinstance(host, torch.Tensor) else host


class StreamRenderer:
    """Renders W+ latents of one generator on its own CUDA stream (see the module docstring)."""

    def __init__(self, G: Any, device: torch.device, noise_mode: str, graphed: bool) -> None:
        self._G = G
        self._device = device
        self._noise_mode = noise_mode
        self._graphed = graphed
        self._graphs: dict[int | None, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._uses: dict[int | None, int] = {}  # frames rendered per size: the first is never graphed

    def render(self, ws: torch.Tensor, size: int | None) -> PendingImage:
        """Queue the frame of ws [1, num_ws, w_dim]; ws must not be written afterwards (the
        session's shown latent is a fresh tensor per step)."""
        stream = reused_stream(self._device, "preview")  # never a new stream per session (see there)
        stream.wait_stream(torch.cuda.current_stream(self._device))  # ws is complete
        with torch.cuda.stream(stream), torch.no_grad():
            ws.record_stream(stream)  # its memory is not reused before this stream has read it
            if self._graphed and self._uses.get(size, 0) >= 1:
                graph, static_ws, static_out = self._graph(ws, size, stream)
                static_ws.copy_(ws)
                graph.replay()
                out = static_out
            else:
                out = pixels(self._G, ws, size, self._noise_mode)
            self._uses[size] = self._uses.get(size, 0) + 1
            host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(out, non_blocking=True)  # queued after the replay; the next replay is after it
            done = torch.cuda.Event()
            done.record(stream)
        return PendingImage(host, done)

    def _graph(
        self, ws: torch.Tensor, size: int | None, stream: torch.cuda.Stream
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Captured on first use of a size (called on the side stream, inside no_grad)."""
        if size not in self._graphs:
            static_ws = ws.clone()
            for _ in range(2):  # warm-up: lazy cuDNN/cuBLAS init must not happen during capture
                pixels(self._G, static_ws, size, self._noise_mode)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                static_out = pixels(self._G, static_ws, size, self._noise_mode)
            self._graphs[size] = (graph, static_ws, static_out)
        return self._graphs[size]
