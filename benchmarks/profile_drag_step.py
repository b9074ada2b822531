"""Where a drag step's GPU time goes: kernels per step, busy vs idle time, top kernels and ops.

The speed bench says how long a step takes; this says why. For each variant it runs a few warm
steps of a 5-handle session (the speed bench's inputs), then profiles `--steps` more with
torch.profiler (CUPTI sees the kernels inside CUDA-graph replays too) and prints:
  - wall ms per step (CUDA events), kernel ms per step (sum of kernel durations), their ratio
    (how busy the GPU is), kernels per step;
  - kernels grouped into families (conv, gemm, elementwise, reduction, grid_sample, copy, ...);
  - the top kernels and the top aten ops by GPU time, with input shapes.

    PYTHONPATH=. python3 benchmarks/profile_drag_step.py --device cuda --config 512 \
        --variants eager-split,cudagraph-split --steps 20
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.bench_speed import (
    ENGINE_VARIANTS,
    build_generator,
    engine_session,
    make_points,
    variant_setup,
)
from engine import latent_from_seed

FAMILIES = [  # first match wins; patterns on the lower-cased kernel name
    (
        "conv (cudnn/implicit gemm)",
        r"conv|implicit|xmma_fprop|xmma_dgrad|xmma_wgrad|cudnn|sm\d+_xmma|fprop|dgrad|wgrad",
    ),
    ("gemm", r"gemm|cutlass|matmul|sgemm|hgemm"),
    ("grid_sample", r"grid_sampler"),
    ("reduction", r"reduce|sum|norm|mean"),
    ("copy / cast", r"copy|cast|convert|to_copy|memcpy|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|index"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pattern in FAMILIES:
        if re.search(pattern, low):
            return fam
    return "other"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def kernel_events(prof: Any) -> list[Any]:
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def profile_variant(
    G: Any, latent: Any, handles: Any, targets: Any, variant: str, steps: int, top: int
) -> str:
    session = engine_session(G, latent, handles, targets, None, variant)
    for _ in range(4):
        session.step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        start.record()
        for _ in range(steps):
            session.step()
        end.record()
        torch.cuda.synchronize()
    wall = start.elapsed_time(end) / steps
    kernels = kernel_events(prof)
    busy = sum(e.device_time for e in kernels) / 1000 / steps  # device_time is in µs
    lines = [
        f"### {variant}",
        "",
        f"wall {wall:.3f} ms/step (profiled), kernels {busy:.3f} ms/step "
        f"({100 * busy / wall:.0f} % busy), {len(kernels) / steps:.0f} kernels/step",
        "",
        "| family | kernels/step | ms/step | share | mean µs |",
        "|---|---|---|---|---|",
    ]
    fam_time: dict[str, float] = defaultdict(float)
    fam_count: dict[str, int] = defaultdict(int)
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        fam_time[family(e.name)] += e.device_time
        fam_count[family(e.name)] += 1
        by_name[e.name].append(e.device_time)
    for fam, t in sorted(fam_time.items(), key=lambda kv: -kv[1]):
        n = fam_count[fam]
        lines.append(
            _row(
                fam,
                f"{n / steps:.0f}",
                f"{t / 1000 / steps:.3f}",
                f"{100 * t / 1000 / steps / busy:.0f} %",
                f"{t / n:.1f}",
            )
        )
    lines += ["", "| kernel | calls/step | ms/step | mean µs |", "|---|---|---|---|"]
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        short = name if len(name) < 110 else name[:107] + "..."
        short = short.replace("|", "/")
        lines.append(
            _row(
                f"`{short}`",
                f"{len(times) / steps:.1f}",
                f"{sum(times) / 1000 / steps:.3f}",
                f"{sum(times) / len(times):.1f}",
            )
        )
    if variant.startswith("eager"):
        lines += ["", "| aten op | shapes | calls/step | GPU ms/step |", "|---|---|---|---|"]
        rows = prof.key_averages(group_by_input_shape=True)
        rows = sorted(rows, key=lambda r: -r.self_device_time_total)[:top]
        for r in rows:
            shapes = str(r.input_shapes)[:90].replace("|", "/")
            lines.append(
                _row(
                    r.key, shapes, f"{r.count / steps:.1f}", f"{r.self_device_time_total / 1000 / steps:.3f}"
                )
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default="512")
    p.add_argument("--handles", type=int, default=5)
    p.add_argument("--variants", default="eager-split,cudagraph-split")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        p.error("profiling kernels needs a CUDA device")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in ENGINE_VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {sorted(ENGINE_VARIANTS)}")
    G = build_generator(args.config, device)
    latent = latent_from_seed(G, 1, truncation_psi=0.7)
    handles, targets = make_points(int(G.img_resolution), args.handles)
    text = (
        f"## drag step profile: {args.config} px, {args.handles} handles, {torch.cuda.get_device_name()}\n\n"
    )
    for v in variants:
        with variant_setup(G, v):
            text += profile_variant(G, latent, handles, targets, v, args.steps, args.top) + "\n"
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
