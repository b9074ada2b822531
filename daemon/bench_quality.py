"""`draggan bench quality`: the paper's Table 1 protocol (face landmark manipulation) on our model.

For each pair k (latent seeds seed+2k and seed+2k+1, truncation psi): render both images,
detect the landmarks on both, drag image 1's landmarks to image 2's with the engine, render,
detect again and report the mean distance (detected after the edit vs the targets) next to the
"no edit" distance (detected on image 1 vs the targets). 1, 5 and 10 handles use fixed subsets
(`POINT_SUBSETS`). Variants run on the same pairs in the same run: plain (the paper: L1
tracking, no mask), nearest (seed 004's handle adjustment), l2 (the reference code's tracking)
and mask (the allowed region is the union of discs of radius R around handles and targets).
The change outside that region (mean absolute pixel difference, 0-255) is reported for every
variant; only the mask variant optimises with it (the paper's protocol has no mask).

A pair is used only if the detector sees all 10 landmarks in both images (a far eye of a turned
head has no meaningful position), so the pair set is fixed by the seeds, the model and the detector.

Each drag step is kernel-launch bound on a GPU (~20 ms whatever the size), so `workers` spawned
processes, each with its own copy of the model, share one GPU and multiply the throughput.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stylegan2.heads.render import LANDMARK_NAMES as _ALL_LANDMARKS

CORE_LANDMARKS: tuple[str, ...] = _ALL_LANDMARKS[:10]  # the detector's landmarks, render order

POINT_SUBSETS: dict[int, tuple[str, ...]] = {
    1: ("nose_tip",),
    5: ("nose_tip", "eye_left", "eye_right", "mouth_left", "mouth_right"),
    10: CORE_LANDMARKS,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},  # the paper: L1 tracking, no mask
    "nearest": {"nearest": True},
    "l2": {"tracking": "l2"},
    "mask": {},  # plain + the disc mask
    "cudagraph": {"compile": "cudagraph"},  # plain, with the CUDA-graph step (CUDA only): same quality?
    "split": {"modconv": "split"},  # plain, modulated convs as input scale + shared conv (faster)
    "batched": {},  # plain, stepped in one batch with BATCH_COMPANIONS other drags (as the daemon does)
}
BATCH_COMPANIONS = 3  # other drags sharing the "batched" variant's batch (never converging)
TARGET_RATIO = {1: 0.15, 5: 0.25, 10: 0.25}  # after / no-edit goals of the demo model
DETECT_BATCH = 16  # images per detection batch during pair selection
GPU_STEP_SECONDS = 0.02  # H100, any size (docs/engine.md): used when no step can be timed


class BenchError(ValueError):
    """A benchmark that cannot run as asked, with a message saying why."""


@dataclass(frozen=True)
class QualityConfig:
    model: str
    landmarks: str
    pairs: int = 100
    points: tuple[int, ...] = (1, 5, 10)
    variants: tuple[str, ...] = ("plain", "nearest", "l2", "mask")
    max_steps: int = 200
    seed: int = 0
    psi: float = 0.7
    lr: float | None = None  # None: the engine's default
    mask_radius: float | None = None  # None: resolution / 8
    min_visibility: float = 0.5
    device: str = "auto"
    workers: int = 1
    max_candidates: int | None = None  # pairs to try before giving up; None: 10 * pairs + 10

    def validate(self) -> None:
        if self.pairs < 1:
            raise BenchError(f"pairs must be >= 1, got {self.pairs}")
        bad = sorted(set(self.points) - set(POINT_SUBSETS))
        if bad or not self.points:
            raise BenchError(f"points must be a subset of {sorted(POINT_SUBSETS)}, got {list(self.points)}")
        bad_v = sorted(set(self.variants) - set(VARIANTS))
        if bad_v or not self.variants:
            raise BenchError(f"variants must be a subset of {list(VARIANTS)}, got {list(self.variants)}")
        if len(set(self.points)) != len(self.points) or len(set(self.variants)) != len(self.variants):
            raise BenchError("points and variants must not repeat")
        if self.max_steps < 1:
            raise BenchError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.seed < 2**31:
            raise BenchError(f"seed must be in [0, 2**31), got {self.seed}")
        if not (math.isfinite(self.psi) and 0 <= self.psi <= 1):
            raise BenchError(f"psi must be in [0, 1], got {self.psi}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise BenchError(f"lr must be > 0, got {self.lr}")
        if self.mask_radius is not None and not (math.isfinite(self.mask_radius) and self.mask_radius > 0):
            raise BenchError(f"mask_radius must be > 0 px, got {self.mask_radius}")
        if not 0 <= self.min_visibility <= 1:
            raise BenchError(f"min_visibility must be in [0, 1], got {self.min_visibility}")
        if self.workers < 1:
            raise BenchError(f"workers must be >= 1, got {self.workers}")
        if self.max_candidates is not None and self.max_candidates < self.pairs:
            raise BenchError(f"max_candidates must be >= pairs ({self.pairs}), got {self.max_candidates}")

    def command_line(self) -> str:
        """The `draggan bench quality` command that reproduces this run (every option explicit)."""
        import shlex

        parts = [
            "draggan bench quality",
            f"--model {shlex.quote(self.model)}",
            f"--landmarks {shlex.quote(self.landmarks)}",
            f"--pairs {self.pairs}",
            f"--points {','.join(map(str, self.points))}",
            f"--variants {','.join(self.variants)}",
            f"--max-steps {self.max_steps}",
            f"--seed {self.seed}",
            f"--psi {self.psi:g}",
        ]
        if self.lr is not None:
            parts.append(f"--lr {self.lr:g}")
        if self.mask_radius is not None:
            parts.append(f"--mask-radius {self.mask_radius:g}")
        parts += [f"--min-visibility {self.min_visibility:g}", f"--device {self.device}"]
        parts.append(f"--workers {self.workers}")
        return " ".join(parts)


@dataclass(frozen=True)
class PairSpec:
    """One selected pair: its index, seeds and the detected landmarks [10, 2] of both images."""

    index: int
    seeds: tuple[int, int]
    landmarks1: np.ndarray
    landmarks2: np.ndarray


@dataclass(frozen=True)
class EditRecord:
    pair: int
    points: int
    variant: str
    no_edit_px: float  # mean detected distance image 1 -> targets
    after_px: float  # mean detected distance edited image -> targets
    tracked_px: float  # mean distance of the engine's tracked handles to the targets at the end
    steps: int
    converged: bool
    seconds: float  # session set-up + run + render
    mad_outside: float  # mean |edited - image 1| (0-255) outside the disc region


@dataclass
class QualityReport:
    config: QualityConfig
    rows: list[dict[str, Any]]
    records: list[EditRecord]
    meta: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""

    @property
    def json_text(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        data = {
            "config": asdict(self.config),
            "command": self.config.command_line(),
            "meta": self.meta,
            "rows": self.rows,
            "records": [asdict(r) for r in self.records],
        }
        return json.dumps(clean(data), indent=1)


# ----- helpers ------------------------------------------------------------------------------------


def allowed_region(handles: np.ndarray, targets: np.ndarray, radius: float, resolution: int) -> np.ndarray:
    """H×W bool: the union of discs of `radius` px around every handle and target (True = may change)."""
    centres = np.concatenate([np.asarray(handles, float), np.asarray(targets, float)]).reshape(-1, 2)
    ys, xs = np.mgrid[0:resolution, 0:resolution]
    allowed = np.zeros((resolution, resolution), dtype=bool)
    for cx, cy in centres:
        allowed |= (xs - cx) ** 2 + (ys - cy) ** 2 <= radius * radius
    return allowed


def mean_abs_outside(before: np.ndarray, after: np.ndarray, allowed: np.ndarray) -> float:
    """Mean absolute difference (0-255, over pixels outside `allowed` and channels); nan if none."""
    outside = ~allowed
    if not outside.any():
        return float("nan")
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32))
    return float(diff[outside].mean())


def subset_indices(landmark_names: Sequence[str], count: int) -> list[int]:
    names = POINT_SUBSETS[count]
    missing = [n for n in names if n not in landmark_names]
    if missing:
        raise BenchError(f"the landmark detector has no {missing}; it knows {list(landmark_names)}")
    return [list(landmark_names).index(n) for n in names]


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1).mean())


# ----- models (per process) -----------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _load_models(cfg: QualityConfig, threads: int | None = None) -> None:
    """Load the generator and detector of `cfg` into this process's state."""
    import torch

    from daemon.cmd_generate import load_any_model
    from engine.latent import resolve_device
    from stylegan2.landmarks import LandmarkFileError, load_detector

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise BenchError(str(e)) from None
    if "cudagraph" in cfg.variants and device.type != "cuda":
        raise BenchError(f"the cudagraph variant needs a CUDA device; --device {cfg.device} is {device}")
    try:
        G, _ = load_any_model(cfg.model, device=str(device))
    except (ValueError, OSError) as e:
        raise BenchError(f"cannot load the model {cfg.model!r}: {e}") from None
    try:
        detector = load_detector(cfg.landmarks, device=device)
    except LandmarkFileError as e:
        raise BenchError(f"{e} (train one with `draggan train-landmarks`)") from None
    _STATE.update(cfg=cfg, G=G, detector=detector, device=device)


def _worker_init(cfg: QualityConfig, threads: int) -> None:
    """Load the models, then warm up (kernels, allocator) so the first edit's time is not inflated."""
    from engine import DragParams, DragSession

    _load_models(cfg, threads)
    G = _STATE["G"]
    c = (int(G.img_resolution) - 1) / 2
    session = DragSession.from_seed(
        G, 0, handles=[[c, c]], targets=[[c + 4, c]], params=DragParams(stop_distance=0.0)
    )
    session.run(2)
    _detect(session.render())


def _image(latent: Any) -> np.ndarray:
    from engine.latent import render_latent

    return render_latent(_STATE["G"], latent)


def _detect(image: np.ndarray) -> np.ndarray:
    from stylegan2.landmarks import detect_landmarks

    return detect_landmarks(_STATE["detector"], image).points[0]


def run_pair(pair: PairSpec) -> list[EditRecord]:
    """Every (points, variant) edit of one pair, in this process (models from `_load_models`)."""
    from engine import DragParams, DragSession, latent_from_seed

    cfg: QualityConfig = _STATE["cfg"]
    G, detector = _STATE["G"], _STATE["detector"]
    res = int(G.img_resolution)
    radius = cfg.mask_radius if cfg.mask_radius is not None else res / 8
    latent = latent_from_seed(G, pair.seeds[0], cfg.psi)
    before = _image(latent)
    records = []
    for count in cfg.points:
        idx = subset_indices(detector.landmark_names, count)
        handles, targets = pair.landmarks1[idx], pair.landmarks2[idx]
        allowed = allowed_region(handles, targets, radius, res)
        for variant in cfg.variants:
            changes = dict(VARIANTS[variant])
            if cfg.lr is not None:
                changes["lr"] = cfg.lr
            mask = allowed if variant == "mask" else None
            t0 = time.perf_counter()
            session = DragSession(G, latent, handles, targets, mask=mask, params=DragParams(**changes))
            if variant == "batched":
                result = run_batched(session, pair, cfg.max_steps)
            else:
                result = session.run(cfg.max_steps)
            after = session.render()
            seconds = time.perf_counter() - t0
            records.append(
                EditRecord(
                    pair=pair.index,
                    points=count,
                    variant=variant,
                    no_edit_px=mean_distance(handles, targets),
                    after_px=mean_distance(_detect(after)[idx], targets),
                    tracked_px=float(np.mean(result.distances)),
                    steps=int(result.step),
                    converged=bool(result.done),
                    seconds=seconds,
                    mad_outside=mean_abs_outside(before, after, allowed),
                )
            )
    return records


def run_batched(session: Any, pair: PairSpec, max_steps: int) -> Any:
    """`session.run(max_steps)`, but every step taken in one batch with other drags of the model."""
    from engine import BatchStepper, DragSession

    G = session.G
    res = int(G.img_resolution)
    rng = np.random.default_rng(pair.seeds[1])
    companions = []
    for k in range(BATCH_COMPANIONS):
        handles = rng.uniform(0.2 * res, 0.8 * res, size=(3, 2)).round()
        targets = np.clip(handles + rng.normal(0, 0.05 * res, size=(3, 2)).round(), 0, res - 1)
        params = session.params.replace(stop_distance=0.0)
        companions.append(
            DragSession.from_seed(
                G, pair.seeds[1] + 1000 + k, handles=handles, targets=targets, params=params
            )
        )
    stepper = BatchStepper()
    result = session.status()
    for _ in range(max_steps):
        result = stepper.step([session, *companions])[0]
        if result.done:
            break
    return result


# ----- the run ------------------------------------------------------------------------------------


def select_pairs(cfg: QualityConfig) -> tuple[list[PairSpec], int]:
    """The first `cfg.pairs` candidate pairs whose 10 landmarks the detector sees in both images.

    Returns (pairs, candidates tried). Needs `_load_models` first.
    """
    import torch

    from engine import latent_from_seed
    from stylegan2 import to_uint8_image
    from stylegan2.landmarks import detect_landmarks

    G, detector = _STATE["G"], _STATE["detector"]
    core = subset_indices(detector.landmark_names, 10)
    limit = cfg.max_candidates if cfg.max_candidates is not None else 10 * cfg.pairs + 10
    chosen: list[PairSpec] = []
    tried = 0
    while len(chosen) < cfg.pairs and tried < limit:
        ks = list(range(tried, min(tried + DETECT_BATCH // 2, limit)))
        seeds = [s for k in ks for s in (cfg.seed + 2 * k, cfg.seed + 2 * k + 1)]
        with torch.no_grad():
            ws = torch.cat([latent_from_seed(G, s, cfg.psi) for s in seeds])
            images = to_uint8_image(G.synthesis(ws, noise_mode="const"))
        det = detect_landmarks(detector, images)
        for j, k in enumerate(ks):
            if len(chosen) == cfg.pairs:
                break
            tried = k + 1
            if (det.visible[2 * j : 2 * j + 2][:, core] >= cfg.min_visibility).all():
                pts = det.points[2 * j : 2 * j + 2][:, core].astype(np.float64)
                chosen.append(PairSpec(k, (seeds[2 * j], seeds[2 * j + 1]), pts[0], pts[1]))
    if len(chosen) < cfg.pairs:
        raise BenchError(
            f"only {len(chosen)} of {tried} candidate pairs have all 10 landmarks visible (detector "
            f"probability >= {cfg.min_visibility}); lower --min-visibility, or check the model and detector"
        )
    return chosen, tried


def time_one_step(pair: PairSpec, steps: int = 3) -> float:
    """Seconds per drag step on this device (10 handles, after one warm-up step)."""
    from engine import DragParams, DragSession, latent_from_seed

    G = _STATE["G"]
    session = DragSession(
        G,
        latent_from_seed(G, pair.seeds[0], _STATE["cfg"].psi),
        pair.landmarks1,
        pair.landmarks2,
        params=DragParams(stop_distance=0.0),
    )
    session.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        session.step()
    return (time.perf_counter() - t0) / steps


def summarise(cfg: QualityConfig, records: list[EditRecord]) -> list[dict[str, Any]]:
    """One row per (points, variant), in the config's order."""
    rows = []
    for count in cfg.points:
        for variant in cfg.variants:
            rs = [r for r in records if r.points == count and r.variant == variant]
            if not rs:
                continue
            no_edit = float(np.mean([r.no_edit_px for r in rs]))
            after = float(np.mean([r.after_px for r in rs]))
            steps = sum(r.steps for r in rs)
            mads = [r.mad_outside for r in rs if math.isfinite(r.mad_outside)]
            ratio = after / no_edit if no_edit > 0 else float("nan")
            rows.append(
                {
                    "points": count,
                    "variant": variant,
                    "edits": len(rs),
                    "no_edit_px": no_edit,
                    "after_px": after,
                    "ratio": ratio,
                    "target_ratio": TARGET_RATIO[count],
                    "meets_target": bool(ratio <= TARGET_RATIO[count]) if math.isfinite(ratio) else False,
                    "tracked_px": float(np.mean([r.tracked_px for r in rs])),
                    "steps_mean": steps / len(rs),
                    "converged": float(np.mean([r.converged for r in rs])),
                    "seconds_per_edit": float(np.mean([r.seconds for r in rs])),
                    "ms_per_step": 1000 * sum(r.seconds for r in rs) / max(steps, 1),
                    "mad_outside": float(np.mean(mads)) if mads else float("nan"),
                }
            )
    return rows


def run_quality_bench(
    cfg: QualityConfig, command: str | None = None, log: Callable[[str], None] = print
) -> QualityReport:
    """Select pairs, run every edit (in `cfg.workers` processes), summarise; see the module docstring."""
    cfg.validate()
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    _load_models(cfg)
    device = _STATE["device"]
    G = _STATE["G"]
    pairs, tried = select_pairs(cfg)
    log(f"{len(pairs)} pairs with all landmarks visible out of {tried} tried (seeds from {cfg.seed})")
    step_s = time_one_step(pairs[0])
    edits = len(pairs) * len(cfg.points) * len(cfg.variants)
    worst = edits * cfg.max_steps * step_s / cfg.workers / 60
    log(
        f"{edits} edits, {1000 * step_s:.0f} ms/step here: at most {worst:.1f} min if every edit runs "
        f"{cfg.max_steps} steps, ~{worst / 2:.1f} min if they average half ({cfg.workers} worker(s), "
        "assuming the device is not saturated)"
    )
    records: list[EditRecord] = []
    last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        if time.perf_counter() - last > 20 or done == len(pairs):
            last = time.perf_counter()
            elapsed = last - start
            log(f"  {done}/{len(pairs)} pairs, {elapsed / 60:.1f} min")

    if cfg.workers == 1:
        for i, pair in enumerate(pairs):
            records += run_pair(pair)
            progress(i + 1)
    else:
        threads = max(1, cores // cfg.workers) if device.type == "cpu" else 1
        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(cfg, threads)) as pool:
            for i, recs in enumerate(pool.imap_unordered(run_pair, pairs)):
                records += recs
                progress(i + 1)
    records.sort(key=lambda r: (r.pair, cfg.points.index(r.points), cfg.variants.index(r.variant)))
    rows = summarise(cfg, records)
    res = int(G.img_resolution)
    meta = {
        "device": _device_name(device),
        "model": cfg.model,
        "resolution": res,
        "landmarks": cfg.landmarks,
        "pairs": len(pairs),
        "candidates_tried": tried,
        "mask_radius_px": cfg.mask_radius if cfg.mask_radius is not None else res / 8,
        "lr": cfg.lr,
        "step_ms_measured": 1000 * step_s,
        "wall_minutes": (time.perf_counter() - start) / 60,
        "command": command or cfg.command_line(),
    }
    report = QualityReport(cfg, rows, records, meta)
    report.markdown = format_markdown(report)
    return report


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _f(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def format_markdown(report: QualityReport) -> str:
    cfg, meta = report.config, report.meta
    lines = [
        f"`{meta['command']}`",
        "",
        f"Model `{meta['model']}` ({meta['resolution']} px), detector `{meta['landmarks']}`, device "
        f"{meta['device']}, {cfg.workers} worker(s); {meta['pairs']} pairs (of {meta['candidates_tried']} "
        f"tried; seeds {cfg.seed}+2k, {cfg.seed}+2k+1, psi {cfg.psi:g}); max {cfg.max_steps} steps; "
        f"mask radius {meta['mask_radius_px']:g} px; wall time {meta['wall_minutes']:.1f} min.",
        "",
        "| points | variant | no edit (px) | after (px) | ratio | target | tracked (px) | steps | "
        "converged | s/edit | ms/step | MAD outside mask |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        ok = "✓" if r["meets_target"] else "✗"
        lines.append(
            f"| {r['points']} | {r['variant']} | {_f(r['no_edit_px'])} | {_f(r['after_px'])} | "
            f"{_f(r['ratio'], 3)} | ≤ {r['target_ratio']:g} {ok} | {_f(r['tracked_px'])} | "
            f"{r['steps_mean']:.1f} | {100 * r['converged']:.0f}% | {_f(r['seconds_per_edit'])} | "
            f"{_f(r['ms_per_step'], 1)} | {_f(r['mad_outside'])} |"
        )
    lines += [
        "",
        "no edit / after: mean distance (px) from the landmarks detected on image 1 / on the edited "
        "image to those detected on image 2 (the targets). ratio = after / no edit. tracked: the engine's "
        "own final handle-to-target distance. MAD outside mask: mean |edited − image 1| (0–255) outside "
        "the discs around handles and targets, for every variant; only `mask` optimises with that mask "
        "(the paper's protocol, `plain`, has none). s/edit includes set-up and the final render; with "
        "several workers on one GPU it includes waiting for the others.",
    ]
    return "\n".join(lines)
