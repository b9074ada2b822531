"""One drag edit: latent, optimiser, handles, targets, mask, reference features; step and run.

Points are (x, y) float pixel coordinates of the model's image: x = column, y = row, the
top-left pixel's centre is (0, 0), valid coordinates are 0 <= x, y <= resolution - 1.
Tracking picks pixels, so after the first step the tracked points are whole numbers (the
reference behaves the same); fractional handles are rounded to the nearest pixel (ties to
even, like Python's round) for their template and their first tracking window.

A step is: forward (grad on, synthesis stopped after the feature block) -> track the handles
in the new features -> motion loss at the tracked points (+ mask term) -> backward to the
optimised latent only -> Adam update, skipped when the stop rule already holds. The
points a step returns were tracked on the latent *before* its update, so `render()` and
`latent()` give that latent: image, latent and points always belong together. The update
made after it is pending and becomes visible with the next step.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import DragInputError
from .fast_step import GraphedCompute, autocast_context, check_graph_device, features_with_fixed_tail
from .latent import check_render_size, generator_device, latent_from_seed, render_latent
from .latent_variable import LatentVariable
from .losses import ACTIVE_DISTANCE, fixed_region_weight, mask_loss, motion_loss
from .nearest import nearest_edge_adjust
from .params import DragParams
from .preview import PendingImage, StreamRenderer
from .sampling import disc_offsets, sample_features, window_offsets
from .tracking import track_points
from .validation import check_latent, check_mask, check_pair_counts, check_points

_GRAPH_VERSIONS = itertools.count()  # unique across sessions: a batch's graph is keyed by them


@dataclass
class StepResult:
    step: int  # 1-based number of steps taken so far in this session
    points: np.ndarray  # [N, 2] tracked handle positions (x, y) after this step's tracking
    distances: np.ndarray  # [N] distance of each tracked handle to its target, px
    loss: float  # motion loss + mask term at the tracked points (nan before any step)
    done: bool  # stop rule satisfied


def latent_gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d each param; zeros for a param the loss does not reach (all handles already there)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


StepOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ws, points, grad, packed


def step_outputs(sessions: list[DragSession]) -> list[StepOutputs]:
    """Each session's step compute from one forward of their stacked latents and one backward of
    their summed losses (samples are independent, so each latent gets its own gradient). The
    sessions must agree on the forward (engine.batch.batch_key). No side effects, no host syncs."""
    first = sessions[0]
    p = first.params
    one = len(sessions) == 1  # a single session pays for no cat/stack
    head = first._variable.head() if one else torch.cat([s._variable.head() for s in sessions])
    base = first._variable.base if one else torch.cat([s._variable.base for s in sessions])
    with autocast_context(first.device, p.autocast):
        features = features_with_fixed_tail(
            first.G, head, base, first.feature_name, p.noise_mode, fused_modconv=p.modconv == "fused"
        )
    parts = [s._track_and_loss(features[i : i + 1]) for i, s in enumerate(sessions)]
    total = parts[0][2] if one else torch.stack([loss for _, _, loss, _ in parts]).sum()
    grads = latent_gradients(total, [s._variable.param for s in sessions])
    return [(ws, points, grad, packed) for (ws, points, _, packed), grad in zip(parts, grads, strict=True)]


def _freeze_generator(G: torch.nn.Module) -> None:
    """Inference only: eval mode and requires_grad False on every parameter (in place, idempotent)."""
    if G.training:
        G.eval()
    for p in G.parameters():
        if p.requires_grad:
            p.requires_grad_(False)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


class DragSession:
    """Owns one edit on one generator. Thread-safe: public methods are serialised by a lock,
    so set_targets / set_mask / set_params from another thread take effect at the next step of
    a running `run()`.

    G is used for inference only: the session puts it in eval mode and sets requires_grad
    False on its parameters (in place); its weights are never written, and gradients are taken
    with torch.autograd.grad w.r.t. the latent alone, so no .grad ever lands on G.
    """

    def __init__(
        self,
        G: Any,
        latent: Any,
        handles: Any,
        targets: Any,
        mask: Any = None,
        params: DragParams = DragParams(),  # noqa: B008 - frozen dataclass, safe as default
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(params, DragParams):
            raise DragInputError(f"params must be a DragParams, got {type(params).__name__}")
        self._lock = threading.RLock()
        self.device = generator_device(G)
        if device is not None and not _same_device(torch.device(device), self.device):
            raise DragInputError(
                f"device {str(device)!r} requested but the generator is on {self.device}; "
                "move the generator first (the session keeps everything on its device)"
            )
        _freeze_generator(G)
        self.G = G
        self.resolution = int(G.img_resolution)
        self.num_ws = int(G.num_ws)
        self._check_params(params)
        self._params = params
        self._feature_name = G.feature_block_name(params.feature_block)
        w0 = check_latent(latent, self.num_ws, int(G.w_dim), self.device)
        self._shown = w0  # latent of the image the current points refer to
        self._variable = LatentVariable(w0, params.space, params.num_layers)
        self._optimizer = self._new_optimizer()
        self.step_count = 0
        self._last_loss = math.nan
        self._allowed: np.ndarray | None = None
        self._fixed_weight: torch.Tensor | None = None
        self._graph: GraphedCompute | None = None  # compile="cudagraph": the captured step compute
        self._graph_version = next(_GRAPH_VERSIONS)  # new whenever a captured graph would go stale
        self._renderer: StreamRenderer | None = None  # previews on a side stream (CUDA)
        self._renderer_key: tuple[str, bool] | None = None
        self.set_points(handles, targets)
        self.set_mask(mask)

    @classmethod
    def from_seed(cls, G: Any, seed: int, truncation_psi: float = 0.7, **kwargs: Any) -> DragSession:
        """Session on the latent of `seed` (reference RandomState convention, truncation toward w_avg)."""
        return cls(G, latent_from_seed(G, seed, truncation_psi), **kwargs)

    # ----- state ---------------------------------------------------------------------------------
    @property
    def params(self) -> DragParams:
        return self._params

    @property
    def handles(self) -> np.ndarray:
        """[N, 2] current (tracked) handle positions (x, y), a copy."""
        return self._points_np.copy()

    @property
    def targets(self) -> np.ndarray:
        """[N, 2] target positions (x, y), a copy."""
        return self._targets_np.copy()

    @property
    def graph_version(self) -> int:
        """Changes whenever a captured CUDA graph of this session's step would be stale (unique
        across sessions): schedulers use it to tell a stable group of drags from a changing one."""
        return self._graph_version

    @property
    def feature_name(self) -> str:
        """Synthesis block whose output is F (e.g. "b128")."""
        return self._feature_name

    def latent(self) -> np.ndarray:
        """[num_ws, w_dim] float32: the full W+ latent of the image the current points refer to."""
        with self._lock:
            return self._shown[0].cpu().numpy().astype(np.float32, copy=True)

    def render(self, size: int | None = None) -> np.ndarray:
        """H×W×3 uint8 image of `latent()`, without gradients; `size` resizes to size×size."""
        with self._lock:
            return render_latent(self.G, self._shown, size, noise_mode=self._params.noise_mode)

    def render_async(self, size: int | None = None) -> PendingImage:
        """`render(size)` as a PendingImage. On CUDA the frame is rendered on a side stream (a CUDA
        graph with compile="cudagraph") and read back by whoever calls result(): the caller can
        step on meanwhile. Elsewhere it is rendered now."""
        with self._lock:
            if self.device.type != "cuda":
                return PendingImage(self.render(size))
            check_render_size(size)
            key = (self._params.noise_mode, self._params.compile == "cudagraph")
            if self._renderer is None or self._renderer_key != key:
                self._renderer = StreamRenderer(self.G, self.device, *key)
                self._renderer_key = key
            return self._renderer.render(self._shown, size)

    def status(self) -> StepResult:
        """The current state as a StepResult, without taking a step."""
        with self._lock:
            distances = np.linalg.norm(self._targets_np - self._points_np, axis=1)
            stop = self._params.stop_px(len(distances))
            return StepResult(
                self.step_count, self.handles, distances, self._last_loss, bool((distances <= stop).all())
            )

    # ----- inputs --------------------------------------------------------------------------------
    def set_points(self, handles: Any, targets: Any) -> None:
        """Start a new drag segment: new handles and targets, Adam state reset.

        F0 and the handle templates are captured from `latent()` (the image the user sees; the
        initial latent for a new session). With params.nearest the handles are first moved toward
        the nearest edge of that image.
        """
        with self._lock:
            h = check_points("handles", handles, self.resolution)
            t = check_points("targets", targets, self.resolution)
            check_pair_counts(h, t)
            if self._params.nearest:
                radius = self._params.nearest_radius_px(self.resolution)
                h = nearest_edge_adjust(self.render(), h, radius, self._params.nearest_rate)
            self._segment_latent = self._shown
            self._template_points = torch.round(torch.as_tensor(h, dtype=torch.float32, device=self.device))
            self._points = torch.as_tensor(h, dtype=torch.float32, device=self.device)
            self._points_np = h.copy()
            self._set_target_tensors(t)
            self._capture_reference()
            self._build_offsets()
            self._variable = LatentVariable(self._shown, self._params.space, self._params.num_layers)
            self._optimizer = self._new_optimizer()
            self._last_loss = math.nan
            self._drop_graph()

    def set_targets(self, targets: Any) -> None:
        """New targets for the same handles; the tracked points and the Adam state are kept."""
        with self._lock:
            t = check_points("targets", targets, self.resolution)
            if len(t) != len(self._points_np):
                raise DragInputError(
                    f"got {len(t)} targets for {len(self._points_np)} handles; "
                    "set_targets needs one target per handle (use set_points to change the handles)"
                )
            self._targets.copy_(torch.as_tensor(t, dtype=torch.float32, device=self.device))  # in place
            self._targets_np = t.copy()

    def set_mask(self, mask: Any) -> None:
        """H×W bool/integer mask at model resolution, nonzero = allowed to change; None clears it."""
        with self._lock:
            self._allowed = check_mask(mask, self.resolution)
            self._update_fixed_weight()
            self._drop_graph()

    def set_params(self, **changes: Any) -> None:
        """Change parameters mid-drag. lr, lam, stop_distance, tracking, r1, r2: Adam state kept.
        space / num_layers: the optimiser is rebuilt from latent() (state reset, pending update dropped).
        feature_block / noise_mode / modconv: F0 and templates are re-captured at this segment's handles.
        nearest*: used by the next set_points. compile / autocast: take effect at the next step.
        """
        with self._lock:
            new = self._params.replace(**changes)
            self._check_params(new)
            old, self._params = self._params, new
            if (new.space, new.num_layers) != (old.space, old.num_layers):
                self._variable = LatentVariable(self._shown, new.space, new.num_layers)
                self._optimizer = self._new_optimizer()
            elif new.lr != old.lr:
                for group in self._optimizer.param_groups:
                    group["lr"] = new.lr
            if (new.feature_block, new.noise_mode, new.modconv) != (
                old.feature_block,
                old.noise_mode,
                old.modconv,
            ):
                self._feature_name = self.G.feature_block_name(new.feature_block)
                self._capture_reference()
            if (new.r1, new.r2) != (old.r1, old.r2):
                self._build_offsets()
            if new != old.replace(lr=new.lr):  # anything but lr is baked into a captured graph
                self._drop_graph()

    # ----- the loop ------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """forward -> track -> loss -> backward -> Adam update (skipped once done); one host transfer."""
        with self._lock:
            ws, points, grad, packed = self._step_outputs()
            host = packed.cpu().numpy().astype(np.float64)  # the step's only device -> host transfer
            return self._apply_step(ws, points, grad, host)

    def run(
        self,
        max_steps: int = 200,
        cancel: Any = None,
        callback: Callable[[StepResult], Any] | None = None,
    ) -> StepResult:
        """Step until the stop rule holds, `max_steps` steps of this call were taken, or `cancel`
        (threading.Event or callable -> bool) is set; cancel is checked before every step.
        callback(StepResult) runs after each step. Returns the last StepResult (status() if no step ran).
        """
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            raise DragInputError(f"max_steps must be an integer >= 0, got {max_steps!r}")
        if cancel is not None and not (hasattr(cancel, "is_set") or callable(cancel)):
            raise DragInputError(
                "cancel must be a threading.Event, a callable returning bool, or None, "
                f"got {type(cancel).__name__}"
            )
        result = None
        for _ in range(max_steps):
            if _cancelled(cancel):
                break
            result = self.step()
            if callback is not None:
                callback(result)
            if result.done:
                break
        return result if result is not None else self.status()

    # ----- internals -----------------------------------------------------------------------------
    def _step_outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_compute()` run eagerly, or replayed from its CUDA graph (captured at the first step)."""
        if self._params.compile == "none":
            return self._compute()
        if self._graph is None:
            self._graph = GraphedCompute(self._compute, self.device)
        return self._graph()

    def _compute(self) -> StepOutputs:
        """The step's device work, free of side effects and host syncs (so a CUDA graph can hold it).

        Returns (ws before the update, tracked points [N, 2], gradient w.r.t. the optimised latent,
        packed [points, distances, loss, done] for the one host transfer).
        """
        return step_outputs([self])[0]

    def _track_and_loss(
        self, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tracking, motion loss and mask term on this session's [1, C, h, w] features (with grad).

        Returns (ws, tracked points, loss, packed [points, distances, loss, done]).
        """
        p = self._params
        features = features.to(torch.float32)  # once: tracking, both loss samples and the mask use it
        with torch.no_grad():
            ws = self._variable.ws()
            points = track_points(
                features.detach(), self._points, self._templates, self._window, self.resolution, p.tracking
            )
        stop = p.stop_px(len(self._points_np))
        loss, distances = motion_loss(
            features, points, self._targets, self._disc, self.resolution, min(ACTIVE_DISTANCE, stop)
        )
        if self._fixed_weight is not None and p.lam > 0:
            loss = loss + p.lam * mask_loss(features, self._features0, self._fixed_weight)
        done = (distances <= stop).all()
        packed = torch.cat(
            [points.reshape(-1), distances, loss.detach().reshape(1), done.reshape(1).to(points.dtype)]
        )
        return ws, points, loss, packed

    def _apply_step(
        self, ws: torch.Tensor, points: torch.Tensor, grad: torch.Tensor, host: np.ndarray
    ) -> StepResult:
        """Take the step's outputs: remember the shown latent and points, Adam update unless done."""
        n = len(self._points_np)
        is_done = bool(host[3 * n + 1] > 0.5)
        self._shown = ws.clone()  # before the update; also frees it from a graph's static output
        self._points.copy_(points)  # in place: a captured graph reads this tensor
        if not is_done:
            param = self._variable.param
            param.grad = grad
            self._optimizer.step()
            param.grad = None
        self._points_np = host[: 2 * n].reshape(n, 2).copy()
        self._last_loss = float(host[3 * n])
        self.step_count += 1
        return StepResult(
            self.step_count, self._points_np.copy(), host[2 * n : 3 * n].copy(), self._last_loss, is_done
        )

    def _packed_size(self) -> int:
        return 3 * len(self._points_np) + 2

    def _drop_graph(self) -> None:
        """Captured graphs read this session's tensors as they were: after a change they are stale."""
        self._graph = None
        self._graph_version = next(_GRAPH_VERSIONS)

    def _check_params(self, params: DragParams) -> None:
        if params.compile == "cudagraph":
            check_graph_device(self.device)
        if params.num_layers > self.num_ws:
            raise DragInputError(
                f"num_layers = {params.num_layers} but this model has only {self.num_ws} ws "
                f"(valid: 1..{self.num_ws})"
            )

    def _new_optimizer(self) -> torch.optim.Optimizer:
        # fused on CUDA: one kernel instead of a dozen launched between graph replays
        fused = self.device.type == "cuda"
        return torch.optim.Adam([self._variable.param], lr=self._params.lr, fused=fused)

    def _features(self, ws: torch.Tensor) -> torch.Tensor:
        """F of `ws` by the step's own program (same modconv): at step 1, F - F0 is then exactly 0,
        as the L1 mask term's gradient needs (|x|' at rounding noise would be ±1, not 0)."""
        p = self._params
        with autocast_context(self.device, p.autocast):
            return features_with_fixed_tail(
                self.G, ws[:, :0], ws, self._feature_name, p.noise_mode, fused_modconv=p.modconv == "fused"
            )

    def _set_target_tensors(self, targets: np.ndarray) -> None:
        self._targets = torch.as_tensor(targets, dtype=torch.float32, device=self.device)
        self._targets_np = targets.copy()

    def _capture_reference(self) -> None:
        """F0 of this segment's latent and the templates f_i = F0(round(p_i)) ([N, C])."""
        with torch.no_grad():
            f0 = self._features(self._segment_latent).to(torch.float32)
        self._features0 = f0
        self._templates = sample_features(f0, self._template_points, self.resolution).t().contiguous()
        self._update_fixed_weight()

    def _update_fixed_weight(self) -> None:
        if self._allowed is None:
            self._fixed_weight = None
        else:
            self._fixed_weight = fixed_region_weight(self._allowed, self._features0.shape[-1], self.device)

    def _build_offsets(self) -> None:
        """Ω1 disc and Ω2 window offsets, built once here, not per step."""
        self._disc = disc_offsets(self._params.r1_px(self.resolution), self.device)
        self._window = window_offsets(self._params.r2_px(self.resolution), self.device)
