"""Where does a StyleGAN2 training step spend its time? Per-phase CUDA timings for a few
variants side by side, then the profiler's top kernels/ops for the first variant.

    python benchmarks/profile_train_step.py --device cuda --variants bf16,fp32,bf16-cl,bf16-b64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from stylegan2 import ops
from stylegan2.training.data import ImageDataset
from stylegan2.training.loop import TrainConfig, build_state, configure_backends, train_step

FAST_FIR = ops.upfirdn2d
VARIANTS: dict[str, dict[str, object]] = {
    "bf16": {},
    "bf16-reffir": {"reference_fir": True},
    "fp32": {"precision": "fp32"},
    "bf16-cl": {"channels_last": True},
    "bf16-b64": {"batch": 64},
}


def demo_config(**overrides: object) -> TrainConfig:
    base = TrainConfig(
        resolution=256, channel_base=16384, channel_max=256, mapping_layers=8, batch=32, gamma=1.0
    )
    return dataclasses.replace(base, **overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dataset(cfg: TrainConfig, device: torch.device) -> ImageDataset:
    data = ImageDataset(512, cfg.resolution, device)
    data.images.random_(0, 256)
    data.num_ready = 512
    return data


def time_steps(cfg: TrainConfig, device: torch.device, steps: int, channels_last: bool) -> dict[str, float]:
    torch.manual_seed(0)
    s = build_state(cfg, device)
    if channels_last:
        for m in (s.G, s.D, s.G_ema):
            m.to(memory_format=torch.channels_last)
    data = _dataset(cfg, device)
    for _ in range(3):
        train_step(s, data)
    _sync(device)
    times: list[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(s, data)
        _sync(device)
        times.append(time.perf_counter() - t0)
    # The R1 step (every r1_interval) is slower; report the median and the mean (what training sees).
    return {
        "median_ms": statistics.median(times) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "img_per_s": cfg.batch * steps / sum(times),
        "kimg_per_min": cfg.batch * steps / sum(times) * 60 / 1000,
    }


def time_phases(cfg: TrainConfig, device: torch.device, repeat: int) -> dict[str, float]:
    """Median ms of each loss phase alone (forward + backward, no optimiser step)."""
    torch.manual_seed(0)
    s = build_state(cfg, device)
    real = _dataset(cfg, device).sample(cfg.batch)

    def z() -> torch.Tensor:
        return torch.randn([cfg.batch, cfg.z_dim], device=device)

    phases = {
        "g_main": (s.G, lambda: s.loss.g_main(z())),
        "d_main": (s.D, lambda: s.loss.d_main(z(), real)),
        "d_r1": (s.D, lambda: s.loss.d_r1(real, gain=cfg.r1_interval)),
    }
    out = {}
    for name, (module, fn) in phases.items():
        times = []
        for i in range(repeat + 2):
            module.requires_grad_(True)
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
            module.requires_grad_(False)
            module.zero_grad(set_to_none=True)
        out[name] = statistics.median(times) * 1e3
    return out


def profile_r1(cfg: TrainConfig, device: torch.device, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    s = build_state(cfg, device)
    real = _dataset(cfg, device).sample(cfg.batch)
    s.D.requires_grad_(True)
    for _ in range(2):
        s.loss.d_r1(real, gain=16)
    _sync(device)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        s.loss.d_r1(real, gain=16)
        _sync(device)
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=rows)
    print(table)


def profile(cfg: TrainConfig, device: torch.device, steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    s = build_state(cfg, device)
    data = _dataset(cfg, device)
    for _ in range(3):
        train_step(s, data)
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        for _ in range(steps):
            train_step(s, data)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))
    events = prof.key_averages()
    launches = sum(
        e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
    )
    print(f"kernel launches per step: {launches / steps:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=32, help="timed steps (covers 2 R1 steps at interval 16)")
    p.add_argument("--profile-steps", type=int, default=16)
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--phases", default="", help="variants to time phase by phase")
    p.add_argument("--profile-r1", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    configure_backends(device)
    print(f"{'variant':<10} {'median ms':>10} {'mean ms':>9} {'img/s':>8} {'kimg/min':>9}")
    for name in args.variants.split(","):
        over = dict(VARIANTS[name])
        cl = bool(over.pop("channels_last", False))
        ops.upfirdn2d = ops.reference_upfirdn2d if over.pop("reference_fir", False) else FAST_FIR
        r = time_steps(demo_config(**over), device, args.steps, cl)
        print(
            f"{name:<11} {r['median_ms']:>10.1f} {r['mean_ms']:>9.1f} {r['img_per_s']:>8.0f}"
            f" {r['kimg_per_min']:>9.2f}",
            flush=True,
        )
    for name in filter(None, args.phases.split(",")):
        over = dict(VARIANTS[name])
        over.pop("channels_last", None)
        ops.upfirdn2d = ops.reference_upfirdn2d if over.pop("reference_fir", False) else FAST_FIR
        ph = time_phases(demo_config(**over), device, repeat=5)
        print(f"phases {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ph.items()), flush=True)
    ops.upfirdn2d = FAST_FIR
    if args.profile_r1:
        profile_r1(demo_config(), device, args.rows)
    if args.profile_steps:
        profile(demo_config(), device, args.profile_steps, args.rows)


if __name__ == "__main__":
    main()
