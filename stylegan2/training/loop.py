"""The StyleGAN2 training loop: phases, EMA, logging, sample grids, checkpoints, export.

Built for short, interruptible GPU sessions: `minutes` is a wall-clock budget after which the
loop checkpoints and returns, and a run resumed from a full checkpoint continues with the same
weights, optimiser moments, augmentation state and RNG streams. That resume is exact only once
the dataset is complete: while a streamed dataset (the heads set) is still filling, batches
are drawn from the images ready so far, and how many are ready at each step depends on timing.

Per step nothing is read back to the host; losses are averaged on the device and fetched
every `log_every` steps (the only sync point, where streamed heads are also taken in).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model_file import save_generator
from ..networks import Generator
from .augment import AugmentPipe
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    compact_codecs,
    find_checkpoint,
    read_checkpoint,
    save_managed,
    write_checkpoint,
)
from .data import DatasetError, ImageDataset, build_dataset
from .discriminator import Discriminator
from .loss import LossConfig, StyleGAN2Loss

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """What defines a training run; stored in every checkpoint and fixed when resuming."""

    data: str = "heads"
    resolution: int = 256
    num_images: int = 50000  # heads only
    data_seed: int = 0  # heads only: which set of heads
    mirror: bool = True  # x-flip half of the real images (dataset augmentation)
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 16384
    channel_max: int = 256
    mbstd_group: int = 4
    batch: int = 32
    lr: float = 0.0025  # G and D
    beta1: float = 0.0
    beta2: float = 0.99
    gamma: float | None = None  # R1 weight; None = ADA's heuristic 0.0002 * res^2 / batch
    r1_interval: int = 16
    pl_weight: float = 0.0
    pl_interval: int = 4
    style_mixing: float = 0.9
    ema_kimg: float | None = None  # None = batch * 10 / 32 (NVIDIA)
    ema_rampup: float | None = 0.05
    aug_p: float = 0.0  # fixed probability of x-flip + translation of D's inputs
    ada: bool = False  # adapt aug_p (ADA heuristic)
    ada_target: float = 0.6
    ada_kimg: float = 100.0
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere
    seed: int = 0

    @property
    def r1_gamma(self) -> float:
        return self.gamma if self.gamma is not None else 0.0002 * self.resolution**2 / self.batch

    @property
    def ema_kimg_value(self) -> float:
        return self.ema_kimg if self.ema_kimg is not None else self.batch * 10 / 32

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        if self.batch < 1 or self.batch % min(self.mbstd_group, self.batch):
            raise ValueError(
                f"batch ({self.batch}) must be >= 1 and a multiple of mbstd group ({self.mbstd_group})"
            )
        if self.lr <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("lr must be > 0 and Adam betas in [0, 1)")
        if self.r1_interval < 1 or self.pl_interval < 1:
            raise ValueError("regularisation intervals must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.mapping_layers < 1 or self.channel_base < 1 or self.channel_max < 1:
            raise ValueError("mapping layers and channel counts must be >= 1")
        LossConfig(self.r1_gamma, self.style_mixing, self.pl_weight).validate()

    def generator_kwargs(self) -> dict[str, Any]:
        # num_fp16_res=0: mixed precision comes from bf16 autocast (see docs/training.md);
        # conv_clamp=256 keeps activations fp16-safe so the model can still run NVIDIA's fp16 path.
        return {
            "z_dim": self.z_dim,
            "c_dim": 0,
            "w_dim": self.w_dim,
            "img_resolution": self.resolution,
            "img_channels": 3,
            "mapping_kwargs": {"num_layers": self.mapping_layers},
            "channel_base": self.channel_base,
            "channel_max": self.channel_max,
            "num_fp16_res": 0,
            "conv_clamp": 256,
            "fused_modconv_default": "inference_only",
        }

    def discriminator_kwargs(self) -> dict[str, Any]:
        return {
            "c_dim": 0,
            "img_resolution": self.resolution,
            "img_channels": 3,
            "architecture": "resnet",
            "channel_base": self.channel_base,
            "channel_max": self.channel_max,
            "num_fp16_res": 0,
            "conv_clamp": 256,
            "epilogue_kwargs": {"mbstd_group_size": self.mbstd_group},
        }


@dataclass
class RunOptions:
    """How this invocation runs; free to change between chunks of one training run."""

    out: Path
    kimg: float = 1000.0  # total target, counted from the start of the run
    minutes: float | None = None  # wall-clock budget for this invocation (includes startup)
    finish_reserve_s: float = 30.0  # time kept back from `minutes` for the final checkpoint/export
    device: str = "auto"
    resume: list[Path] = field(default_factory=list)
    auto_resume: bool = False  # start fresh when none of `resume` exists
    export: Path | None = None
    export_only: bool = False
    portable: Path | None = None  # also write a compact checkpoint here at the end
    ckpt_minutes: float = 5.0
    sample_kimg: float = 50.0
    grid: tuple[int, int] = (8, 4)
    keep: int = 2
    log_every: int = 50
    max_shard_bytes: int = 16 * 1024 * 1024 - 64 * 1024
    cache_dir: Path | None = None
    workers: int | None = None
    min_ready: int | None = 2048
    channels_last: bool = False
    progress: bool = True
    command: str = ""

    def validate(self) -> None:
        if self.kimg < 0 or (self.minutes is not None and self.minutes <= 0) or self.finish_reserve_s < 0:
            raise ValueError("--kimg must be >= 0, --minutes > 0 and --finish-reserve >= 0")
        if self.sample_kimg <= 0 or self.ckpt_minutes <= 0 or self.log_every < 1 or self.keep < 1:
            raise ValueError("--sample-kimg and --ckpt-minutes must be > 0, --log-every and --keep >= 1")
        if min(self.grid) < 1 or (self.min_ready is not None and self.min_ready < 1):
            raise ValueError("the sample grid and --min-ready must be positive")


@dataclass
class TrainResult:
    step: int
    cur_nimg: int
    checkpoint: Path | None
    portable: Path | None
    export: Path | None
    stats: dict[str, float]
    kimg_per_min: float | None


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return dev


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" and device.type != "cuda":
        raise ValueError("bf16 training needs a CUDA device; use --precision fp32 on CPU")
    auto_bf16 = precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" or auto_bf16:
        return torch.bfloat16
    return None


# -- state <-> checkpoint tensors ---------------------------------------------------------------
@dataclass
class TrainState:
    cfg: TrainConfig
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_G: torch.optim.Adam
    opt_D: torch.optim.Adam
    augment: AugmentPipe
    loss: StyleGAN2Loss
    step: int = 0
    cur_nimg: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _lazy_ratio(interval: int | None) -> float:
    return interval / (interval + 1) if interval else 1.0


def build_state(cfg: TrainConfig, device: torch.device) -> TrainState:
    """Fresh networks and optimisers (consumes the global RNG: seed it first)."""
    G = Generator(**cfg.generator_kwargs()).train().requires_grad_(False).to(device)
    D = Discriminator(**cfg.discriminator_kwargs()).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()

    def adam(module: torch.nn.Module, ratio: float) -> torch.optim.Adam:
        kwargs: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
        return torch.optim.Adam(
            module.parameters(),
            lr=cfg.lr * ratio,
            betas=(cfg.beta1**ratio, cfg.beta2**ratio),
            eps=1e-8,
            **kwargs,
        )

    opt_G = adam(G, _lazy_ratio(cfg.pl_interval if cfg.pl_weight > 0 else None))
    opt_D = adam(D, _lazy_ratio(cfg.r1_interval if cfg.r1_gamma > 0 else None))
    augment = AugmentPipe(
        p=cfg.aug_p, adaptive=cfg.ada, target=cfg.ada_target, speed_kimg=cfg.ada_kimg, device=device
    )
    loss_cfg = LossConfig(r1_gamma=cfg.r1_gamma, style_mixing_prob=cfg.style_mixing, pl_weight=cfg.pl_weight)
    loss = StyleGAN2Loss(G, D, augment, loss_cfg, amp_dtype=amp_dtype(cfg.precision, device))
    return TrainState(cfg, G, D, G_ema, opt_G, opt_D, augment, loss)


def _opt_tensors(prefix: str, opt: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in module.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"{prefix}/{name}/{key}"] = value.detach().to("cpu", copy=True)
    return out


def _load_opt(
    prefix: str, opt: torch.optim.Optimizer, module: torch.nn.Module, t: dict[str, torch.Tensor]
) -> None:
    names = [n for n, _ in module.named_parameters()]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for idx, name in enumerate(names):
        entry = {k.rsplit("/", 1)[1]: v for k, v in t.items() if k.rsplit("/", 1)[0] == f"{prefix}/{name}"}
        if entry:
            state[idx] = entry
    sd = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def state_tensors(s: TrainState) -> dict[str, torch.Tensor]:
    """Every tensor of the training state, named `G/…`, `G_ema/…`, `D/…`, `opt_G/<param>/<key>`, `rng/…`."""
    t: dict[str, torch.Tensor] = {}
    for prefix, module in (("G", s.G), ("G_ema", s.G_ema), ("D", s.D)):
        for k, v in module.state_dict().items():
            t[f"{prefix}/{k}"] = v.detach().to("cpu", copy=True)
    t.update(_opt_tensors("opt_G", s.opt_G, s.G))
    t.update(_opt_tensors("opt_D", s.opt_D, s.D))
    t["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            t[f"rng/cuda/{i}"] = st
    return t


def state_meta(s: TrainState) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "config": dataclasses.asdict(s.cfg),
        "step": s.step,
        "cur_nimg": s.cur_nimg,
        "train_seconds": s.train_seconds,
        "history": s.history,
        "augment": s.augment.state_dict(),
        "loss": s.loss.state_dict(),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *map(_jsonable, np_state[2:])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _jsonable(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def restore_state(s: TrainState, ckpt: Checkpoint) -> None:
    """Load everything but the RNG streams (call `restore_rng` last, right before training)."""
    t = ckpt.tensors
    for prefix, module in (("G", s.G), ("G_ema", s.G_ema), ("D", s.D)):
        sd = {k[len(prefix) + 1 :]: v for k, v in t.items() if k.startswith(prefix + "/")}
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{ckpt.path}: {prefix} does not match its config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    _load_opt("opt_G", s.opt_G, s.G, t)
    _load_opt("opt_D", s.opt_D, s.D, t)
    m = ckpt.meta
    s.step, s.cur_nimg = int(m["step"]), int(m["cur_nimg"])
    s.train_seconds = float(m.get("train_seconds", 0.0))
    s.history = list(m.get("history", []))
    s.augment.load_state_dict(m["augment"])
    s.loss.load_state_dict(m["loss"])


def restore_rng(ckpt: Checkpoint, device: torch.device) -> None:
    m, t = ckpt.meta, ckpt.tensors
    torch.set_rng_state(t["rng/torch_cpu"])
    cuda_states = [t[k] for k in sorted(t) if k.startswith("rng/cuda/")]
    if device.type == "cuda" and cuda_states:
        for i, st in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(st, i)
    kind, keys, pos, has_gauss, cached = m["rng_numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = m["rng_python"]
    random.setstate((version, tuple(internal), gauss))


def config_from_checkpoint(ckpt: Checkpoint) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in ckpt.meta["config"].items() if k in known})


def pick_checkpoint(paths: list[Path]) -> Path | None:
    """The newest checkpoint among `paths` (by step; a full checkpoint wins a tie); None if none exist."""
    best: tuple[int, int, Path] | None = None
    for p in paths:
        try:
            found = find_checkpoint(p)
        except CheckpointError:
            continue
        meta = json.loads((found / "meta.json").read_text())
        exact = all(e["codec"] == "raw" for e in meta["tensors"].values())
        key = (int(meta["meta"]["step"]), int(exact), found)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


# -- output helpers -----------------------------------------------------------------------------
def fixed_grid_z(count: int, z_dim: int, seed: int) -> torch.Tensor:
    """Grid latents from their own RandomState: the same every chunk, and no global RNG is used."""
    return torch.from_numpy(np.random.RandomState(seed).randn(count, z_dim)).to(torch.float32)


def save_grid(images: torch.Tensor, grid: tuple[int, int], path: Path) -> None:
    from PIL import Image

    from ..networks import to_uint8_image

    cols, rows = grid
    arr = to_uint8_image(images[: cols * rows])
    n, h, w, c = arr.shape
    canvas = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        canvas[r * h : (r + 1) * h, col * w : (col + 1) * w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(canvas).save(tmp)
    tmp.replace(path)


@torch.no_grad()
def render_grid(G_ema: Generator, z: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = [G_ema(zb.to(device), None, noise_mode="const").cpu() for zb in z.split(16)]
    return torch.cat(out)


def export_generator(s: TrainState, path: Path, command: str) -> Path:
    """G_ema as a model file; the training command is the last training chunk's, not `command`
    (with --export-only, `command` is the export itself and is recorded as such)."""
    trained_by = [c["command"] for c in s.history if c.get("command")]
    extra = {
        "training_kimg": round(s.cur_nimg / 1000, 3),
        "training_steps": s.step,
        "training_command": trained_by[-1] if trained_by else command,
        "export_command": command,
        "training_chunks": len(s.history),
        "training_seconds": round(s.train_seconds, 1),
        "training_config": dataclasses.asdict(s.cfg),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_generator(s.G_ema, tmp, dtype=torch.float16, extra=extra)
    tmp.replace(path)
    return path


class _Progress:
    """A tqdm bar when wanted and available (it may be missing on a bare GPU box); log lines always."""

    def __init__(self, total: int, initial: int, bar: bool, log: Callable[[str], None]) -> None:
        self.bar = None
        self._log = log
        if bar:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    unit="img",
                    unit_scale=True,
                    dynamic_ncols=True,
                    mininterval=1.0 if sys.stderr.isatty() else 15.0,
                    smoothing=0.1,
                )
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, text: str, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.write(text)
        else:
            self._log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGTERM (e.g. `timeout`) or a first Ctrl-C asks the loop to checkpoint and stop instead of
    dying mid-step; a second Ctrl-C interrupts as usual."""
    flag = {"stop": False}
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no signal handling
        pass
    try:
        yield lambda: flag["stop"]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _nan_to_num_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


# -- the loop -----------------------------------------------------------------------------------
def train_step(s: TrainState, dataset: ImageDataset) -> dict[str, torch.Tensor]:
    """One iteration of NVIDIA's phases Gmain, Greg, Dmain, Dreg, then the EMA update."""
    cfg, dev = s.cfg, next(s.G.parameters()).device
    batch = cfg.batch
    stats: dict[str, torch.Tensor] = {}
    real = dataset.sample(batch)

    s.G.requires_grad_(True)
    s.opt_G.zero_grad(set_to_none=True)
    stats["loss_G"] = s.loss.g_main(torch.randn([batch, cfg.z_dim], device=dev))
    _nan_to_num_grads(s.G)
    s.opt_G.step()
    if cfg.pl_weight > 0 and s.step % cfg.pl_interval == 0:
        s.opt_G.zero_grad(set_to_none=True)
        stats["pl"] = s.loss.g_pl(torch.randn([batch, cfg.z_dim], device=dev), gain=cfg.pl_interval)
        _nan_to_num_grads(s.G)
        s.opt_G.step()
    s.G.requires_grad_(False)

    s.D.requires_grad_(True)
    s.opt_D.zero_grad(set_to_none=True)
    stats["loss_D_fake"], stats["loss_D_real"] = s.loss.d_main(
        torch.randn([batch, cfg.z_dim], device=dev), real
    )
    _nan_to_num_grads(s.D)
    s.opt_D.step()
    if cfg.r1_gamma > 0 and s.step % cfg.r1_interval == 0:
        s.opt_D.zero_grad(set_to_none=True)
        stats["r1"] = s.loss.d_r1(real, gain=cfg.r1_interval)
        _nan_to_num_grads(s.D)
        s.opt_D.step()
    s.D.requires_grad_(False)

    # EMA with NVIDIA's ema_kimg / ema_rampup semantics (cur_nimg before this step's images).
    ema_nimg = cfg.ema_kimg_value * 1000
    if cfg.ema_rampup is not None:
        ema_nimg = min(ema_nimg, s.cur_nimg * cfg.ema_rampup)
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    with torch.no_grad():
        torch._foreach_lerp_(list(s.G_ema.parameters()), list(s.G.parameters()), 1.0 - beta)
        torch._foreach_copy_(list(s.G_ema.buffers()), list(s.G.buffers()))

    s.augment.adjust(batch)
    s.step += 1
    s.cur_nimg += batch
    return stats


def _load_resume(run: RunOptions) -> Checkpoint | None:
    if not run.resume:
        return None
    path = pick_checkpoint(run.resume)
    if path is None:
        if run.auto_resume:
            return None
        raise CheckpointError(f"no checkpoint found in {', '.join(map(str, run.resume))}")
    return read_checkpoint(path)


def _print(text: str) -> None:
    print(text, flush=True)


def train(cfg: TrainConfig, run: RunOptions, log: Callable[[str], None] = _print) -> TrainResult:
    """Train (or resume, or only export) according to `cfg` and `run`; see RunOptions."""
    t_start = time.monotonic()
    run.validate()
    device = resolve_device(run.device)
    configure_backends(device)
    ckpt = _load_resume(run)
    if ckpt is not None:
        cfg = config_from_checkpoint(ckpt)
        log(
            f"resuming from {ckpt.path} (step {ckpt.meta['step']}, {ckpt.meta['cur_nimg'] / 1000:.1f} kimg"
            f"{'' if ckpt.exact else ', compact: weights fp16, Adam moments 8-bit'})"
        )
    elif run.export_only:
        raise CheckpointError("--export-only needs a checkpoint to export (--resume)")
    cfg.validate()

    if ckpt is None:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    s = build_state(cfg, device)
    if ckpt is not None:
        restore_state(s, ckpt)

    if run.export_only:
        if run.export is None:
            raise ValueError("--export-only needs --export PATH")
        path = export_generator(s, run.export, run.command)
        log(f"exported G_ema ({s.cur_nimg / 1000:.1f} kimg) to {path}")
        return TrainResult(s.step, s.cur_nimg, ckpt.path if ckpt else None, None, path, {}, None)

    if run.channels_last:
        for m in (s.G, s.D, s.G_ema):
            m.to(memory_format=torch.channels_last)
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root, sample_dir = out / "checkpoints", out / "samples"
    log_path = out / "log.jsonl"

    t_data = time.monotonic()
    dataset = build_dataset(
        cfg.data,
        cfg.resolution,
        device,
        mirror=cfg.mirror,
        num_images=cfg.num_images,
        seed=cfg.data_seed,
        cache_dir=run.cache_dir,
        workers=run.workers,
        min_ready=run.min_ready,
    )
    log(
        f"data: {cfg.data} ({dataset.num_ready}/{dataset.capacity} images ready after "
        f"{time.monotonic() - t_data:.1f} s)"
    )
    grid_z = fixed_grid_z(run.grid[0] * run.grid[1], cfg.z_dim, seed=cfg.seed + 12345)
    if ckpt is None:
        save_grid(dataset.grid_images(run.grid[0] * run.grid[1]), run.grid, sample_dir / "reals.png")
        save_grid(render_grid(s.G_ema, grid_z, device), run.grid, sample_dir / "fakes000000.png")
    else:
        restore_rng(ckpt, device)

    def checkpoint(final: bool) -> Path:
        t0 = time.monotonic()
        tensors, meta = state_tensors(s), state_meta(s)
        path = save_managed(
            ckpt_root, s.step, tensors, meta, keep=run.keep, max_shard_bytes=run.max_shard_bytes
        )
        if final and run.portable is not None:
            codecs = compact_codecs(tensors, cfg.beta1)
            write_checkpoint(
                run.portable, tensors, meta, codecs=codecs, compress=True, max_shard_bytes=run.max_shard_bytes
            )
        log(f"checkpoint {path.name} ({time.monotonic() - t0:.1f} s)")
        return path

    target_nimg = round(run.kimg * 1000)
    deadline = t_start + run.minutes * 60 - run.finish_reserve_s if run.minutes is not None else math.inf
    chunk_start = {"step": s.step, "kimg": s.cur_nimg / 1000, "command": run.command}
    progress = _Progress(target_nimg, min(s.cur_nimg, target_nimg), run.progress, log)
    pending: list[dict[str, torch.Tensor]] = []
    last_stats: dict[str, float] = {}
    t_log, nimg_log = time.monotonic(), s.cur_nimg
    t_ckpt = time.monotonic()
    next_sample = (s.cur_nimg // int(run.sample_kimg * 1000) + 1) * int(run.sample_kimg * 1000)
    kimg_per_min = None
    sync_check_steps = (s.step + 2, s.step + min(12, run.log_every))
    t_train = time.monotonic()
    ckpt_path = None
    try:
        with _stop_on_signals() as stop_requested:
            while s.cur_nimg < target_nimg and time.monotonic() < deadline and not stop_requested():
                watch_syncs = device.type == "cuda" and sync_check_steps[0] <= s.step < sync_check_steps[1]
                if watch_syncs:  # a few steps after warm-up: report any host sync (there should be none)
                    torch.cuda.set_sync_debug_mode("warn")
                pending.append(train_step(s, dataset))
                if watch_syncs:
                    torch.cuda.set_sync_debug_mode("default")
                progress.update(cfg.batch)
                if s.step % run.log_every == 0 or s.cur_nimg >= target_nimg:
                    try:
                        dataset.poll()
                    except DatasetError as e:  # keep training on what arrived rather than lose the chunk
                        log(f"warning: {e}; training continues on {dataset.num_ready} images")
                    last_stats = _summarise(pending, s)
                    pending.clear()
                    now = time.monotonic()
                    kimg_per_min = (s.cur_nimg - nimg_log) / 1000 / max((now - t_log) / 60, 1e-9)
                    t_log, nimg_log = now, s.cur_nimg
                    last_stats["kimg_per_min"] = kimg_per_min
                    last_stats["images_ready"] = dataset.num_ready
                    _append_jsonl(log_path, last_stats)
                    progress.log(_format_stats(last_stats), {"kimg/min": f"{kimg_per_min:.2f}"})
                    if not all(math.isfinite(v) for v in last_stats.values()):
                        log("warning: non-finite loss values (gradients are sanitised, training continues)")
                if s.cur_nimg >= next_sample:
                    save_grid(
                        render_grid(s.G_ema, grid_z, device),
                        run.grid,
                        sample_dir / f"fakes{s.cur_nimg // 1000:06d}.png",
                    )
                    next_sample += int(run.sample_kimg * 1000)
                if time.monotonic() - t_ckpt > run.ckpt_minutes * 60:
                    s.train_seconds += time.monotonic() - t_train
                    t_train = time.monotonic()
                    ckpt_path = checkpoint(final=False)
                    t_ckpt = time.monotonic()
    except Exception as e:
        # Save what there is (at worst one step is half applied, harmless for a GAN), then fail.
        log(f"error at step {s.step}: {e!r}; writing a checkpoint before exiting")
        with contextlib.suppress(Exception):
            checkpoint(final=True)
        raise
    finally:
        progress.close()
        dataset.close()

    s.train_seconds += time.monotonic() - t_train
    s.history.append(
        {
            **chunk_start,
            "end_step": s.step,
            "end_kimg": s.cur_nimg / 1000,
            "seconds": round(time.monotonic() - t_start, 1),
            "device": str(device),
        }
    )
    if pending:
        last_stats = _summarise(pending, s)
        _append_jsonl(log_path, last_stats)
    save_grid(
        render_grid(s.G_ema, grid_z, device), run.grid, sample_dir / f"fakes{s.cur_nimg // 1000:06d}.png"
    )
    ckpt_path = checkpoint(final=True)
    export = export_generator(s, run.export, run.command) if run.export is not None else None
    log(f"stopped at step {s.step}, {s.cur_nimg / 1000:.1f} kimg, after {time.monotonic() - t_start:.0f} s")
    return TrainResult(s.step, s.cur_nimg, ckpt_path, run.portable, export, last_stats, kimg_per_min)


def _summarise(pending: list[dict[str, torch.Tensor]], s: TrainState) -> dict[str, float]:
    """Mean of each logged loss over the pending steps: one device->host transfer."""
    keys = sorted({k for p in pending for k in p})
    means = [torch.stack([p[k].float() for p in pending if k in p]).mean() for k in keys]
    values = torch.stack([*means, s.augment.p.float()]).tolist() if keys else [float(s.augment.p)]
    out = dict(zip([*keys, "aug_p"], values))
    out["kimg"] = s.cur_nimg / 1000
    out["step"] = s.step
    return out


def _format_stats(st: dict[str, float]) -> str:
    parts = [f"kimg {st['kimg']:.1f}", f"step {int(st['step'])}"]
    for k in ("loss_G", "loss_D_fake", "loss_D_real", "r1", "pl", "aug_p", "kimg_per_min", "images_ready"):
        if k in st:
            parts.append(f"{k} {st[k]:.4g}")
    return "  ".join(parts)


def _append_jsonl(path: Path, record: dict[str, float]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
