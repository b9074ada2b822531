"""`draggan bench speed`: time per drag step of the reference formulation and of our engine.

For each generator config, handle count and mask setting, both implementations run on the same
model, latent and points: (a) `reference`, the public code's per-step formulation
(daemon/bench_reference.py); (b) our engine, `eager` and (on CUDA) `cudagraph`. Reported: median
and p90 ms per step (CUDA events, warm-up excluded), the first step (includes graph capture), peak
GPU memory, and reference ÷ engine. Also: the FLOP floor (FLOPs of one step counted with
torch.utils.flop_counter.FlopCounterMode, over a measured dense matmul rate in the dtype the heavy
blocks run in), a numerical check of each fast variant's latent trajectory against eager, and with
--e2e the daemon end to end over loopback (benchmarks/bench_daemon.py). Random weights throughout:
speed does not depend on what the weights are.

    draggan bench speed                                  # all configs on the GPU
    draggan bench speed --device cpu --configs tiny      # a seconds-long smoke run
    python -m daemon.bench_speed --configs 512 --handles 5 --out results/
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

PRESET_OF = {
    "256": "stylegan2-256",
    "256-wide": "stylegan2-256-wide",
    "512": "stylegan2-512",
    "1024": "stylegan2-1024",
    "tiny": "tiny-256",  # CPU smoke runs
}
CONFIG_NAMES = tuple(PRESET_OF)
ENGINE_VARIANTS: dict[str, dict[str, str]] = {
    "eager": {},
    "cudagraph": {"compile": "cudagraph"},
    "eager-bf16": {"autocast": "bf16"},
    "cudagraph-bf16": {"compile": "cudagraph", "autocast": "bf16"},
    "cudagraph-cudnnbench": {"compile": "cudagraph"},  # with torch.backends.cudnn.benchmark on
    "eager-split": {"modconv": "split"},
    "cudagraph-split": {"compile": "cudagraph", "modconv": "split"},
    "cudagraph-cl": {"compile": "cudagraph"},  # activations in channels-last memory format
    "cudagraph-split-cl": {"compile": "cudagraph", "modconv": "split"},
    "cudagraph-split-cudnnbench": {"compile": "cudagraph", "modconv": "split"},
}
IMPLS = ("reference", *ENGINE_VARIANTS, "inductor")
LR = 2e-3
SEED = 1
FLOOR_HANDLES = 5  # the FLOP count's case, and the one the extra variants are timed on


# ----------------------------------------------------------------------------- inputs


def build_generator(config: str, device: Any) -> Any:
    """Random-weight generator of a named config, eval mode, on `device`."""
    from stylegan2.presets import random_generator

    return random_generator(PRESET_OF[config], seed=0).to(device)


def make_points(resolution: int, count: int, seed: int = SEED) -> tuple[Any, Any]:
    """`count` integer handles inside the central 80 % and targets ~8 % of the size away, (x, y)."""
    import numpy as np

    rng = np.random.default_rng(seed * 1000 + count)
    lo, hi = round(0.1 * resolution), round(0.9 * resolution)
    handles = rng.integers(lo, hi, size=(count, 2)).astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi, size=count)
    step = 0.08 * resolution
    offsets = np.round(np.stack([np.cos(angle), np.sin(angle)], axis=1) * step)
    targets = np.clip(handles + offsets, lo, hi)
    return handles, targets


def make_allowed_mask(resolution: int) -> Any:
    """Allowed-to-change region: the central box; its frame must stay fixed."""
    import numpy as np

    allowed = np.zeros((resolution, resolution), dtype=bool)
    a, b = resolution // 8, resolution - resolution // 8
    allowed[a:b, a:b] = True
    return allowed


# ----------------------------------------------------------------------------- implementations


def reference_drag(G: Any, latent: Any, handles: Any, targets: Any, allowed: Any, exact_grid: bool = False):
    from .bench_reference import ReferenceDrag

    fixed = None if allowed is None else ~allowed
    return ReferenceDrag(G, latent, handles, targets, fixed, lr=LR, lam=20.0, exact_grid=exact_grid)


def engine_session(G: Any, latent: Any, handles: Any, targets: Any, allowed: Any, variant: str):
    from engine import DragParams, DragSession

    params = DragParams(tracking="l2", lr=LR, stop_distance=0.0, **ENGINE_VARIANTS[variant])
    return DragSession(G, latent, handles, targets, allowed, params)


@contextlib.contextmanager
def variant_setup(G: Any, impl: str) -> Iterator[None]:
    """What a variant changes outside DragParams, for the duration of its measurement:
    "-cudnnbench" turns on cuDNN autotuning, "-cl" makes every block's input channels-last
    (convolutions then keep that format through the block)."""
    import torch

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = impl.endswith("-cudnnbench")
    hooks = []
    if impl.endswith("-cl"):

        def to_channels_last(_module: Any, args: tuple) -> tuple:
            x = args[0]
            if x is None:
                return args
            return (x.contiguous(memory_format=torch.channels_last), *args[1:])

        hooks = [block.register_forward_pre_hook(to_channels_last) for block in _blocks(G)]
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        for h in hooks:
            h.remove()


def _blocks(G: Any) -> list[Any]:
    synthesis = G.synthesis
    return [getattr(synthesis, name) for name in synthesis.block_names()]


class CompiledSynthesis:
    """G with its synthesis network run through torch.compile(mode="reduce-overhead"): an experiment
    of this benchmark (the engine's eager step on an inductor-compiled, CUDA-graphed forward)."""

    def __init__(self, G: Any) -> None:
        import torch

        self._G = G
        self.synthesis = torch.compile(G.synthesis, mode="reduce-overhead", dynamic=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._G, name)


def make_stepper(impl: str, G: Any, latent: Any, handles: Any, targets: Any, allowed: Any) -> Any:
    if impl == "reference":
        return reference_drag(G, latent, handles, targets, allowed)
    if impl == "inductor":
        return engine_session(CompiledSynthesis(G), latent, handles, targets, allowed, "eager")
    return engine_session(G, latent, handles, targets, allowed, impl)


# ----------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    config: str
    handles: int
    mask: bool
    impl: str
    median_ms: float = math.nan
    p90_ms: float = math.nan
    first_ms: float = math.nan
    peak_mib: float | None = None
    steps: int = 0
    error: str = ""


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(make: Callable[[], Any], device: Any, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(wall ms from construction to the end of the first step, per-step ms of `steps` steps after
    `warmup` more). `make()` returns an object with step(). On CUDA each timed step is bracketed by
    CUDA events, read after the last step; elsewhere by the host clock.
    """
    import torch

    t0 = time.perf_counter()
    stepper = make()
    step = stepper.step
    step()
    _sync(device)
    first = (time.perf_counter() - t0) * 1000
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        pairs = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            pairs.append((start, end))
        _sync(device)
        return first, [s.elapsed_time(e) for s, e in pairs]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    return first, times


def _free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(
    impl: str, G: Any, latent: Any, case: tuple[str, int, bool], device: Any, warmup: int, steps: int
) -> Timing:
    """One implementation on one case; errors (out of memory included) are recorded, not raised."""
    import numpy as np
    import torch

    config, count, masked = case
    res = int(G.img_resolution)
    handles, targets = make_points(res, count)
    allowed = make_allowed_mask(res) if masked else None
    out = Timing(config, count, masked, impl)
    _free(device)
    try:
        with variant_setup(G, impl):
            first, times = time_steps(
                lambda: make_stepper(impl, G, latent, handles, targets, allowed), device, warmup, steps
            )
        out.first_ms = first
        out.median_ms = float(np.median(times))
        out.p90_ms = float(np.percentile(times, 90))
        out.steps = len(times)
        if device.type == "cuda":
            out.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    except Exception as e:
        out.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        if device.type == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
            out.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        traceback.print_exc(file=sys.stderr)
    _free(device)
    return out


@dataclass
class BatchTiming:
    """N sessions (different latents and points) stepping once each: one by one, or as one batch."""

    config: str
    sessions: int
    variant: str
    batched: bool
    median_ms: float = math.nan  # per round (every session one step)
    p90_ms: float = math.nan
    first_ms: float = math.nan
    peak_mib: float | None = None
    error: str = ""


class _Round:
    """Every session one step: one by one (each its own step), or one BatchStepper step."""

    def __init__(self, sessions: list[Any], batched: bool) -> None:
        from engine import BatchStepper

        self._sessions = sessions
        self._stepper = BatchStepper() if batched else None

    def step(self) -> None:
        if self._stepper is not None:
            self._stepper.step(self._sessions)
        else:
            for s in self._sessions:
                s.step()


def measure_batch(
    G: Any,
    config: str,
    device: Any,
    count: int,
    sessions: int,
    variant: str,
    batched: bool,
    warmup: int,
    steps: int,
) -> BatchTiming:
    import numpy as np
    import torch

    from engine import latent_from_seed

    out = BatchTiming(config, sessions, variant, batched)
    res = int(G.img_resolution)

    def make() -> _Round:
        made = []
        for i in range(sessions):
            handles, targets = make_points(res, count, seed=SEED + i)
            made.append(engine_session(G, latent_from_seed(G, SEED + i), handles, targets, None, variant))
        return _Round(made, batched)

    _free(device)
    try:
        with variant_setup(G, variant):
            first, times = time_steps(make, device, warmup, steps)
        out.first_ms, out.median_ms = first, float(np.median(times))
        out.p90_ms = float(np.percentile(times, 90))
        if device.type == "cuda":
            out.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    except Exception as e:
        out.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        traceback.print_exc(file=sys.stderr)
    _free(device)
    return out


@dataclass
class PreviewTiming:
    """A drag loop with a preview frame every `every` steps, read back by another thread (as the
    daemon's encoder does): no previews, render() on the step's stream, or render_async()."""

    config: str
    variant: str
    size: int
    mode: str  # "none" | "sync" | "async"
    every: int
    ms_per_step: float = math.nan
    max_abs_diff: float = math.nan  # async frame vs render(), uint8 levels
    peak_mib: float = math.nan  # CUDA: model + session + preview graph and buffers
    error: str = ""


def measure_preview(
    G: Any, config: str, device: Any, variant: str, size: int, mode: str, every: int, warmup: int, steps: int
) -> PreviewTiming:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from engine import latent_from_seed

    out = PreviewTiming(config, variant, size, mode, every)
    res = int(G.img_resolution)
    handles, targets = make_points(res, FLOOR_HANDLES)
    render_size = None if size == res else size
    _free(device)
    try:
        session = engine_session(G, latent_from_seed(G, SEED), handles, targets, None, variant)
        with ThreadPoolExecutor(max_workers=1) as reader:
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                session.step()
                if mode != "none" and i % every == 0:
                    if mode == "sync":
                        frame = session.render(render_size)
                        reader.submit(lambda f=frame: f.sum())
                    else:
                        pending = session.render_async(render_size)
                        reader.submit(lambda p=pending: p.result().sum())
        _sync(device)
        out.ms_per_step = (time.perf_counter() - t0) * 1000 / steps
        if device.type == "cuda":
            import torch

            out.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        if mode == "async":
            a = session.render_async(render_size).result().astype(np.int16)
            out.max_abs_diff = float(np.abs(a - session.render(render_size).astype(np.int16)).max())
    except Exception as e:
        out.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        traceback.print_exc(file=sys.stderr)
    _free(device)
    return out


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call (matmuls and convolutions, forward and backward) by FlopCounterMode. The
    resampling filters count as the convolutions they are, not as the banded matrix products the
    frozen generator runs them as (those multiply mostly zeros: work the floor should not include)."""
    from torch.utils.flop_counter import FlopCounterMode

    from stylegan2.fir_matmul import convolution_form

    counter = FlopCounterMode(display=False)
    with counter, convolution_form():
        step()
    return float(counter.get_total_flops())


def matmul_tflops(device: Any, dtype: Any, n: int = 8192, reps: int = 10) -> float:
    """Dense n×n×n matmul rate on random data, TFLOP/s (the device's practical matrix ceiling)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        _sync(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - t0
    return 2 * n**3 * reps / seconds / 1e12


def heavy_dtype(G: Any, device: Any) -> Any:
    """The dtype of the feature block on this device (fp16 blocks run fp16 only on CUDA)."""
    import torch

    block = getattr(G.synthesis, G.feature_block_name(6))
    return torch.float16 if (device.type == "cuda" and block.use_fp16) else torch.float32


@dataclass
class Floor:
    config: str
    engine_gflop: float
    reference_gflop: float
    dtype: str
    tflops: float
    floor_ms: float


def measure_floor(G: Any, latent: Any, config: str, device: Any, rates: dict[str, float]) -> Floor:
    res = int(G.img_resolution)
    handles, targets = make_points(res, FLOOR_HANDLES)
    eng = engine_session(G, latent, handles, targets, None, "eager")
    eng.step()  # warm: lazy init outside the count
    engine_flops = count_flops(eng.step)
    ref = reference_drag(G, latent, handles, targets, None)
    ref.step()
    reference_flops = count_flops(ref.step)
    dtype = str(heavy_dtype(G, device)).replace("torch.", "")
    if dtype not in rates:
        rates[dtype] = matmul_tflops(device, heavy_dtype(G, device), 8192 if device.type == "cuda" else 512)
    tflops = rates[dtype]
    eng = ref = None
    _free(device)
    return Floor(
        config, engine_flops / 1e9, reference_flops / 1e9, dtype, tflops, engine_flops / tflops / 1e9
    )


@dataclass
class Check:
    config: str
    variant: str
    steps: int
    loss1_rel: float  # |Δ loss| / loss at step 1 (same latent, before any update)
    grad1_cos: float  # cosine of the first updates (Adam's first step is about lr * sign(gradient))
    points_equal: float  # fraction of steps whose tracked points equal eager's exactly
    max_abs_dlatent: float  # after `steps` steps, in latent units (Adam moves each element by ~lr a step)
    syncs_per_step: float = math.nan  # synchronising CUDA calls per step of the variant
    eager_syncs_per_step: float = math.nan
    error: str = ""


def count_syncs(step: Callable[[], Any], steps: int = 3) -> float:
    """Synchronising CUDA calls per step, by torch.cuda.set_sync_debug_mode("warn") warnings."""
    import warnings

    import torch

    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            for _ in range(steps):
                step()
            torch.cuda.set_sync_debug_mode(previous)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def trajectory_check(
    G: Any, latent: Any, config: str, variant: str, steps: int, masked: bool = True
) -> Check:
    """Eager and `variant` side by side from the same inputs (5 handles): the first step's loss and
    update, then how long the tracked points stay identical. variant "eager" is the baseline: two
    eager runs differ only by non-deterministic kernels (atomic adds in grid_sample's backward)."""
    import numpy as np

    res = int(G.img_resolution)
    handles, targets = make_points(res, FLOOR_HANDLES)
    allowed = make_allowed_mask(res) if masked else None
    start = latent_np(latent)
    try:
        a = engine_session(G, latent, handles, targets, allowed, "eager")
        b = engine_session(G, latent, handles, targets, allowed, variant)
        equal = 0
        loss1_rel = cos = math.nan
        for i in range(steps):
            ra = a.step()
            with variant_setup(G, variant):
                rb = b.step()
            if i == 0:
                loss1_rel = abs(ra.loss - rb.loss) / max(abs(ra.loss), 1e-30)
            if i == 1:  # latent() now includes the first update
                da, db = (a.latent() - start).ravel(), (b.latent() - start).ravel()
                cos = float(da @ db / max(np.linalg.norm(da) * np.linalg.norm(db), 1e-30))
            equal += bool(np.array_equal(ra.points, rb.points))
        worst = float(np.abs(a.latent() - b.latent()).max())
        cuda = b.device.type == "cuda"
        with variant_setup(G, variant):
            syncs = count_syncs(b.step) if cuda else math.nan
        eager_syncs = count_syncs(a.step) if cuda else math.nan
        return Check(config, variant, steps, loss1_rel, cos, equal / max(steps, 1), worst, syncs, eager_syncs)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        nan = math.nan
        return Check(config, variant, steps, nan, nan, nan, nan, error=f"{type(e).__name__}: {e}"[:200])


def latent_np(latent: Any) -> Any:
    return latent[0].detach().cpu().numpy()


# ----------------------------------------------------------------------------- end to end


def run_e2e(config: str, device: str, steps: int, repeat: int, sizes: str, timeout: float) -> str:
    """benchmarks/bench_daemon.py against a spawned daemon with this config's random model."""
    script = REPO / "benchmarks" / "bench_daemon.py"
    if not script.exists():
        return f"e2e skipped: {script.relative_to(REPO)} not found"
    cmd = [
        sys.executable,
        str(script),
        "--model",
        f"random:{PRESET_OF[config]}",
        "--device",
        device,
        "--sizes",
        sizes,
    ]
    cmd += ["--steps", str(steps), "--repeat", str(repeat)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: bench_daemon.py and its daemon
        out, _ = proc.communicate()
        return f"e2e timed out after {timeout:.0f} s; output so far:\n{out}"
    if proc.returncode != 0:
        return f"e2e failed (exit {proc.returncode}):\n{out[-3000:]}"
    return out


# ----------------------------------------------------------------------------- report


@dataclass
class Report:
    device: str
    command: str
    rates: dict[str, float] = field(default_factory=dict)
    timings: list[Timing] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    batches: list[BatchTiming] = field(default_factory=list)
    previews: list[PreviewTiming] = field(default_factory=list)
    e2e: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # per config: memory every session of it shares

    def reference_ms(self, t: Timing) -> float:
        for r in self.timings:
            if (r.config, r.handles, r.mask, r.impl) == (t.config, t.handles, t.mask, "reference"):
                return r.median_ms
        return math.nan


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


TIMING_COLUMNS = (
    "model",
    "handles",
    "mask",
    "impl",
    "median ms",
    "p90 ms",
    "setup + first step ms",
    "peak MiB",
    "ref ÷ this",
)


def timing_table(report: Report) -> str:
    rows = ["| " + " | ".join(TIMING_COLUMNS) + " |", "|" + "---|" * len(TIMING_COLUMNS)]
    for t in report.timings:
        ratio = report.reference_ms(t) / t.median_ms if t.median_ms == t.median_ms else math.nan
        cells = [
            t.config,
            str(t.handles),
            "on" if t.mask else "off",
            t.impl,
            _num(t.median_ms),
            _num(t.p90_ms),
            _num(t.first_ms, ".0f"),
            _num(t.peak_mib, ".0f"),
            _num(ratio, ".1f") if t.impl != "reference" else "1",
        ]
        if t.error:
            cells[4] = f"error: {t.error}"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def floor_table(report: Report) -> str:
    head = (
        "| model | engine GFLOP/step | reference GFLOP/step | matmul TFLOP/s (dtype) | floor ms "
        f"| engine best ms, {FLOOR_HANDLES} handles, no mask | × floor |"
    )
    rows = [head, "|---|---|---|---|---|---|---|"]
    for f in report.floors:
        ours = [
            t
            for t in report.timings
            if (t.config, t.handles, t.mask) == (f.config, FLOOR_HANDLES, False)
            and t.impl != "reference"
            and not t.error
        ]
        best = min(ours, key=lambda t: t.median_ms, default=None)
        best_cell = f"{best.median_ms:.2f} ({best.impl})" if best else "–"
        times = _num(best.median_ms / f.floor_ms, ".1f") if best else "–"
        rows.append(
            f"| {f.config} | {f.engine_gflop:.1f} | {f.reference_gflop:.1f} | {f.tflops:.3g} ({f.dtype}) "
            f"| {f.floor_ms:.3f} | {best_cell} | {times} |"
        )
    return "\n".join(rows)


def batch_table(report: Report) -> str:
    rows = [
        "| model | sessions | variant | one by one ms/round | batched ms/round "
        "| batched ms per session-step "
        "| batched ÷ one by one | × floor per session-step | peak MiB (one by one, batched) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    floors = {f.config: f.floor_ms for f in report.floors}
    for (config, sessions, variant), group in _groups(
        report.batches, "config", "sessions", "variant"
    ).items():
        pair = {x.batched: x for x in group}
        one, bat = pair.get(False), pair.get(True)
        per = bat.median_ms / sessions if bat and not bat.error else math.nan
        ratio = bat.median_ms / one.median_ms if bat and one and not (bat.error or one.error) else math.nan
        mib = ", ".join(_num(t.peak_mib, ".0f") if t else "–" for t in (one, bat))
        rows.append(
            f"| {config} | {sessions} | {variant} | {_cell(one, 'median_ms')} | {_cell(bat, 'median_ms')} "
            f"| {_num(per)} | {_num(ratio)} | {_num(per / floors.get(config, math.nan), '.1f')} | {mib} |"
        )
    return "\n".join(rows)


def preview_table(report: Report) -> str:
    rows = [
        "| model | variant | preview size | every | ms/step: no previews | render() | render_async() "
        "| async frame vs render(), max abs diff | peak MiB: no previews, render(), render_async() |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, group in _groups(report.previews, "config", "variant", "size", "every").items():
        by_mode = {x.mode: x for x in group}
        modes = ("none", "sync", "async")
        cells = [_cell(by_mode.get(mode), "ms_per_step") for mode in modes]
        diff = by_mode["async"].max_abs_diff if "async" in by_mode else math.nan
        peaks = ", ".join(_num(by_mode[m].peak_mib, ".0f") if m in by_mode else "–" for m in modes)
        rows.append("| " + " | ".join([*map(str, key), *cells, _num(diff, ".0f"), peaks]) + " |")
    return "\n".join(rows)


def _groups(items: list[Any], *fields: str) -> dict[tuple, list[Any]]:
    """Items by the values of `fields`, in order of first appearance."""
    out: dict[tuple, list[Any]] = {}
    for x in items:
        out.setdefault(tuple(getattr(x, f) for f in fields), []).append(x)
    return out


def _cell(t: Any, attr: str) -> str:
    return "–" if t is None else (f"error: {t.error}" if t.error else _num(getattr(t, attr)))


def check_table(report: Report) -> str:
    rows = [
        "| model | variant vs eager | steps | step-1 loss rel. diff | first-update cosine "
        "| steps with equal points | max abs Δlatent at the end | host syncs/step (variant, eager) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        if c.error:
            rows.append(f"| {c.config} | {c.variant} | {c.steps} | error: {c.error} | – | – | – | – |")
            continue
        rows.append(
            f"| {c.config} | {c.variant} | {c.steps} | {c.loss1_rel:.1e} | {_num(c.grad1_cos, '.6f')} "
            f"| {c.points_equal:.0%} | {c.max_abs_dlatent:.1e} "
            f"| {_num(c.syncs_per_step, '.1f')}, {_num(c.eager_syncs_per_step, '.1f')} |"
        )
    return "\n".join(rows)


def _shared_memory_line(config: str, G: Any) -> str:
    """Memory every session of a model shares: weights, and the constants its frozen layers derive
    (measured after one eager step, which fills them)."""
    import torch

    from engine import latent_from_seed
    from stylegan2.networks import frozen_constants_nbytes

    device = next(G.parameters()).device
    handles, targets = make_points(int(G.img_resolution), FLOOR_HANDLES)
    engine_session(G, latent_from_seed(G, SEED), handles, targets, None, "eager").step()
    weights = sum(t.numel() * t.element_size() for t in [*G.parameters(), *G.buffers()])
    constants = frozen_constants_nbytes(G)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (
        f"model {config}: weights {weights / 2**20:.0f} MiB, "
        f"frozen-layer constants {constants / 2**20:.0f} MiB (shared by its sessions)"
    )


def render_report(report: Report) -> str:
    rates = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in report.rates.items())
    parts = [
        f"device: {report.device}; matmul rates: {rates}",
        f"command: {report.command}",
        *report.models,
        "",
        "### Step time",
        timing_table(report),
        "",
        "### FLOP floor",
        floor_table(report),
        "",
        "### Fast paths vs eager (5 handles, mask on, same inputs; eager vs eager = run-to-run noise)",
        check_table(report),
    ]
    if report.batches:
        parts += [
            "",
            f"### Concurrent sessions: one by one vs one batch ({FLOOR_HANDLES} handles each, no mask)",
            batch_table(report),
        ]
    if report.previews:
        parts += ["", "### Preview frames during a drag (5 handles, no mask)", preview_table(report)]
    for text in report.e2e:
        parts += ["", "### End to end (daemon over loopback)", text.strip()]
    if report.skipped:
        parts += ["", "skipped (time budget): " + ", ".join(report.skipped)]
    return "\n".join(parts) + "\n"


def write_report(report: Report, out: Path | None) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(render_report(report))
    (out / "speed.json").write_text(json.dumps(asdict(report), indent=1, default=str))


# ----------------------------------------------------------------------------- command


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--configs",
        default="512,1024,256,256-wide",
        help=f"comma-separated, in order of priority, from {', '.join(CONFIG_NAMES)}",
    )
    p.add_argument("--handles", default="1,5,68", help="handle counts (default 1,5,68)")
    p.add_argument("--masks", default="off,on", help="off, on or both (default off,on)")
    p.add_argument(
        "--impls",
        default="reference,eager,cudagraph",
        help=f"implementations for every case, from {', '.join(IMPLS)} (CUDA-only ones skipped elsewhere)",
    )
    p.add_argument(
        "--extra-impls",
        default="eager-bf16,cudagraph-bf16,cudagraph-cudnnbench",
        help="more engine variants, timed only at 5 handles (or the first count) with the mask off",
    )
    p.add_argument("--warmup", type=int, default=3, help="steps after the first, untimed (default 3)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per engine run (default 20)")
    p.add_argument("--ref-steps", type=int, default=8, help="timed steps per reference run (default 8)")
    p.add_argument("--check-steps", type=int, default=30, help="steps of the eager-vs-fast check (0: none)")
    p.add_argument("--no-floor", action="store_true", help="skip the FLOP count and matmul rate")
    p.add_argument(
        "--e2e", action="store_true", help="also run benchmarks/bench_daemon.py on the first config"
    )
    p.add_argument("--e2e-sizes", default="256,512", help="preview sizes for --e2e (default 256,512)")
    p.add_argument("--e2e-steps", type=int, default=20)
    p.add_argument("--e2e-repeat", type=int, default=2)
    p.add_argument(
        "--inductor-config",
        help="also time the engine on a torch.compile(mode='reduce-overhead') forward for this config "
        "(5 handles, mask off; compile time shows as the first step), after everything else; CUDA only",
    )
    p.add_argument(
        "--batch-sessions",
        default="",
        help="session counts for the batching rows, e.g. 4,8 (default: none)",
    )
    p.add_argument(
        "--batch-variants",
        default="cudagraph,cudagraph-split,eager",
        help="engine variants for the batching rows (CUDA-only ones skipped elsewhere)",
    )
    p.add_argument("--batch-configs", help="configs for the batching rows (default: the first of --configs)")
    p.add_argument("--preview-sizes", default="", help="preview sizes for the preview rows, e.g. 256,512")
    p.add_argument("--preview-every", type=int, default=2, help="a preview every N steps (default 2)")
    p.add_argument(
        "--preview-variants", default="cudagraph,eager", help="engine variants for the preview rows"
    )
    p.add_argument("--time-budget", type=float, default=0, help="seconds; start no new case after (0: none)")
    p.add_argument(
        "--out", type=Path, help="folder for speed.md and speed.json (rewritten after each config)"
    )


def _validate(args: argparse.Namespace) -> None:
    bad = [c for c in [*_csv(args.configs), args.inductor_config or "tiny"] if c not in CONFIG_NAMES]
    if bad or not _csv(args.configs):
        raise ValueError(f"unknown config(s) {bad}; choose from {', '.join(CONFIG_NAMES)}")
    impls = _csv(args.impls) + _csv(args.extra_impls)
    impls += [i for i in _csv(args.batch_variants) + _csv(args.preview_variants) if i not in ENGINE_VARIANTS]
    if not all(n.isdigit() and int(n) >= 1 for n in _csv(args.preview_sizes)) or args.preview_every < 1:
        raise ValueError(f"--preview-sizes must be positive integers, got {args.preview_sizes!r}")
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise ValueError(f"unknown implementation(s) {bad}; choose from {', '.join(IMPLS)}")
    if not all(h.isdigit() and int(h) >= 1 for h in _csv(args.handles)) or not _csv(args.handles):
        raise ValueError(f"--handles must be positive integers, got {args.handles!r}")
    if not all(n.isdigit() and int(n) >= 1 for n in _csv(args.batch_sessions)):
        raise ValueError(f"--batch-sessions must be positive integers, got {args.batch_sessions!r}")
    bad = [c for c in _csv(args.batch_configs or "") if c not in CONFIG_NAMES]
    if bad:
        raise ValueError(f"unknown --batch-configs {bad}; choose from {', '.join(CONFIG_NAMES)}")
    if not set(_csv(args.masks)) <= {"off", "on"} or not _csv(args.masks):
        raise ValueError(f"--masks must be off, on or off,on; got {args.masks!r}")
    for name in ("warmup", "steps", "ref_steps", "check_steps", "e2e_steps", "e2e_repeat"):
        if getattr(args, name) < (1 if name in ("steps", "ref_steps", "e2e_steps", "e2e_repeat") else 0):
            raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")


def run_speed(args: argparse.Namespace) -> int:
    try:
        _validate(args)
    except ValueError as e:
        print(f"draggan bench speed: {e}", file=sys.stderr)
        return 2
    import torch

    from engine import latent_from_seed, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"draggan bench speed: {e}", file=sys.stderr)
        return 2
    started = time.monotonic()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = Report(f"{name}, torch {torch.__version__}", shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    cuda = device.type == "cuda"
    impls = [i for i in _csv(args.impls) if cuda or "cudagraph" not in i]
    extra = [i for i in _csv(args.extra_impls) if (cuda or "cudagraph" not in i) and i not in impls]
    handle_counts = [int(h) for h in _csv(args.handles)]
    lever_count = 5 if 5 in handle_counts else handle_counts[0]
    masks = [m == "on" for m in _csv(args.masks)]

    def out_of_time() -> bool:
        return args.time_budget > 0 and time.monotonic() - started > args.time_budget

    if not args.no_floor:
        dtypes = [torch.float16, torch.bfloat16] if cuda else [torch.float32]
        for dt in dtypes:
            report.rates[str(dt).replace("torch.", "")] = matmul_tflops(device, dt, 8192 if cuda else 512)
    configs = _csv(args.configs)
    for config in configs:
        if out_of_time():
            report.skipped.append(config)
            continue
        G = build_generator(config, device)
        latent = latent_from_seed(G, SEED)
        print(f"[{time.monotonic() - started:6.1f} s] {config}", file=sys.stderr, flush=True)
        report.models.append(_shared_memory_line(config, G))
        if not args.no_floor:
            report.floors.append(measure_floor(G, latent, config, device, report.rates))
        for count in handle_counts:
            for masked in masks:
                case = (config, count, masked)
                case_impls = impls + (extra if (count == lever_count and not masked) else [])
                for impl in case_impls:
                    if out_of_time():
                        report.skipped.append(f"{config}/{count}/{'mask' if masked else 'nomask'}/{impl}")
                        continue
                    steps = args.ref_steps if impl == "reference" else args.steps
                    t = measure(impl, G, latent, case, device, args.warmup, steps)
                    report.timings.append(t)
                    print(
                        f"  {t.handles:>3} h mask={t.mask!s:5} {t.impl:15} {t.median_ms:9.2f} ms {t.error}",
                        file=sys.stderr,
                        flush=True,
                    )
        batch_configs = _csv(args.batch_configs) if args.batch_configs else configs[:1]
        if config in batch_configs:
            variants = [v for v in _csv(args.batch_variants) if cuda or "cudagraph" not in v]
            for sessions in [int(n) for n in _csv(args.batch_sessions)]:
                for variant in variants:
                    for batched in (False, True):
                        if out_of_time():
                            report.skipped.append(f"{config}/batch{sessions}/{variant}")
                            continue
                        b = measure_batch(
                            G,
                            config,
                            device,
                            lever_count,
                            sessions,
                            variant,
                            batched,
                            args.warmup,
                            args.steps,
                        )
                        report.batches.append(b)
                        print(
                            f"  {sessions} sessions {variant:15} {'batched' if batched else 'one by one':10} "
                            f"{b.median_ms:9.2f} ms/round {b.error}",
                            file=sys.stderr,
                            flush=True,
                        )
        if config in batch_configs:
            variants = [v for v in _csv(args.preview_variants) if cuda or "cudagraph" not in v]
            for size in [int(n) for n in _csv(args.preview_sizes)]:
                for variant in variants:
                    for mode in ("none", "sync", "async"):
                        if out_of_time():
                            report.skipped.append(f"{config}/preview{size}/{variant}/{mode}")
                            continue
                        pt = measure_preview(
                            G,
                            config,
                            device,
                            variant,
                            size,
                            mode,
                            args.preview_every,
                            args.warmup,
                            args.steps,
                        )
                        report.previews.append(pt)
                        print(
                            f"  preview {size} {variant:15} {mode:6} {pt.ms_per_step:9.2f} ms/step",
                            pt.error,
                            file=sys.stderr,
                            flush=True,
                        )
        if args.check_steps and not out_of_time():
            checked = [i for i in impls + extra if i != "reference" and "cudnnbench" not in i]
            for variant in checked:
                print(f"  check {variant}", file=sys.stderr, flush=True)
                report.checks.append(trajectory_check(G, latent, config, variant, args.check_steps))
        G = latent = None
        _free(device)
        write_report(report, args.out)
        if args.e2e and config == configs[0]:
            if out_of_time():
                report.skipped.append("e2e")
            else:
                left = args.time_budget - (time.monotonic() - started) if args.time_budget > 0 else 1800
                print(f"[{time.monotonic() - started:6.1f} s] e2e", file=sys.stderr, flush=True)
                e2e = run_e2e(
                    config, args.device, args.e2e_steps, args.e2e_repeat, args.e2e_sizes, max(left, 60)
                )
                report.e2e.append(e2e)
                write_report(report, args.out)
    write_report(report, args.out)
    if args.inductor_config and cuda:
        if out_of_time():
            report.skipped.append("inductor")
        else:
            print(f"[{time.monotonic() - started:6.1f} s] inductor", file=sys.stderr, flush=True)
            G = build_generator(args.inductor_config, device)
            case = (args.inductor_config, lever_count, False)
            report.timings.append(
                measure("inductor", G, latent_from_seed(G, SEED), case, device, 3, args.steps)
            )
            G = None
            _free(device)
            write_report(report, args.out)
    print(render_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="draggan bench speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_speed_arguments(parser)
    return run_speed(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
