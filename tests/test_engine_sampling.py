"""Engine geometry on plain tensors: feature sampling, Ω1/Ω2 offsets, tracking, losses.

The reference formulation upsamples the whole feature map to image size
(F.interpolate, bilinear, align_corners=False) and indexes it at integer pixels; the engine
samples the small map directly. These tests pin the two together.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import tracking
from engine.losses import fixed_region_weight, mask_loss, motion_loss
from engine.sampling import disc_offsets, sample_features, window_offsets
from engine.tracking import track_points


def upsampled(features: torch.Tensor, size: int) -> torch.Tensor:
    """The reference: the whole map at image resolution. [C, H, W]."""
    return F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)[0]


def continuous_bilinear(features: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """Bilinear value of a [C, fh, fw] map at image-pixel (x, y): the map upsampled continuously."""
    _, fh, fw = features.shape
    fx = min(max((x + 0.5) * fw / size - 0.5, 0.0), fw - 1)
    fy = min(max((y + 0.5) * fh / size - 0.5, 0.0), fh - 1)
    x0, y0 = int(np.floor(fx)), int(np.floor(fy))
    x1, y1 = min(x0 + 1, fw - 1), min(y0 + 1, fh - 1)
    ax, ay = fx - x0, fy - y0
    top = features[:, y0, x0] * (1 - ax) + features[:, y0, x1] * ax
    bottom = features[:, y1, x0] * (1 - ax) + features[:, y1, x1] * ax
    return top * (1 - ay) + bottom * ay


@pytest.mark.parametrize(
    ("feature_size", "image_size"), [(16, 32), (16, 64), (8, 64), (32, 32), (128, 256), (128, 512)]
)
def test_sampling_at_every_integer_pixel_matches_upsample_then_index(feature_size: int, image_size: int):
    torch.manual_seed(0)
    feats = torch.randn(1, 3 if image_size > 64 else 7, feature_size, feature_size)
    ys, xs = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    xy = torch.stack([xs, ys], dim=-1).to(torch.float32)  # every pixel, borders included
    ours = sample_features(feats, xy, image_size)  # [C, H, W]
    ref = upsampled(feats, image_size)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    # spot-check the corners explicitly (x, y order vs row, column)
    for x, y in [(0, 0), (image_size - 1, 0), (0, image_size - 1), (image_size - 1, image_size - 1), (5, 2)]:
        one = sample_features(feats, torch.tensor([[float(x), float(y)]]), image_size)[:, 0]
        assert torch.allclose(one, ref[:, y, x], atol=1e-5, rtol=0)


def test_sampling_at_fractional_and_near_border_positions_is_bilinear() -> None:
    torch.manual_seed(1)
    feats = torch.randn(1, 5, 16, 16)
    size = 64
    rng = np.random.default_rng(0)
    pts = np.concatenate(
        [
            rng.uniform(0, size - 1, size=(40, 2)),
            [[0.0, 0.3], [size - 1, size - 1.25], [-0.7, 10.5], [size - 0.6, 3.2], [12.25, -0.5]],
        ]
    )
    ours = sample_features(feats, torch.tensor(pts, dtype=torch.float32), size).numpy()
    f = feats[0].numpy()
    for i, (x, y) in enumerate(pts):
        np.testing.assert_allclose(ours[:, i], continuous_bilinear(f, x, y, size), atol=1e-5, rtol=0)


def test_sampling_at_half_pixel_between_two_pixels_of_one_cell_is_their_mean() -> None:
    # Within one feature cell the upsampled map is linear, so halfway sampling = mean of neighbours.
    torch.manual_seed(2)
    feats = torch.randn(1, 3, 8, 8)
    ref = upsampled(feats, 64)
    mid = sample_features(feats, torch.tensor([[17.5, 9.0]]), 64)[:, 0]
    assert torch.allclose(mid, (ref[:, 9, 17] + ref[:, 9, 18]) / 2, atol=1e-5)


@pytest.mark.parametrize("radius", [0.375, 1.0, 1.5, 2.0, 3.0, 6.0])
def test_disc_offsets_are_integer_pixels_strictly_inside_radius(radius: float) -> None:
    got = disc_offsets(radius).numpy()
    r = int(np.ceil(radius))
    span = range(-r, r + 1)
    want = [(dx, dy) for dy in span for dx in span if dx * dx + dy * dy < radius * radius]
    assert [tuple(map(int, o)) for o in got] == want  # same set, row-major order
    assert (0, 0) in want


def test_reference_radii_give_the_reference_discs() -> None:
    # 3 * 256 / 512 = 1.5 and the reference's round(1.5) = 2 select the same 3x3 disc.
    assert len(disc_offsets(1.5)) == len(disc_offsets(2.0)) == 9
    assert len(disc_offsets(3.0)) == 25  # 5x5: the farthest, (2, 2), is at 2.83 < 3


def test_window_offsets_are_the_full_square_row_major() -> None:
    got = window_offsets(2).numpy()
    assert got.shape == (25, 2)
    assert tuple(got[0]) == (-2, -2) and tuple(got[1]) == (-1, -2) and tuple(got[-1]) == (2, 2)


def reference_track(ref: torch.Tensor, point: tuple[int, int], template: torch.Tensor, r: int, l1: bool):
    """The reference loop: clipped window on the upsampled map, argmin, row-major ties."""
    _, h, w = ref.shape
    x, y = point
    top, bottom, left, right = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
    patch = ref[:, top:bottom, left:right]
    diff = patch - template[:, None, None]
    dist = diff.abs().sum(0) if l1 else diff.square().sum(0).sqrt()
    idx = int(dist.reshape(-1).argmin())
    width = right - left
    return (idx % width + left, idx // width + top)


@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("handles_per_chunk", [None, 2], ids=["one-chunk", "chunks-of-2"])
def test_tracking_matches_the_reference_loop_including_clipped_borders(
    metric: str, handles_per_chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if handles_per_chunk is not None:  # many handles are tracked a chunk at a time: same answer
        monkeypatch.setattr(tracking, "CHUNK_VALUES", handles_per_chunk * 8 * 11 * 11)
    torch.manual_seed(3)
    size, r = 64, 5
    feats = torch.randn(1, 8, 16, 16)
    ref = upsampled(feats, size)
    points = [(0, 0), (63, 63), (2, 60), (30, 31), (63, 10)]
    templates = torch.randn(len(points), 8)
    got = track_points(
        feats, torch.tensor(points, dtype=torch.float32), templates, window_offsets(r), size, metric
    )
    for i, p in enumerate(points):
        assert tuple(int(v) for v in got[i]) == reference_track(ref, p, templates[i], r, metric == "l1")


def test_tracking_finds_a_planted_template_and_rounds_fractional_centres() -> None:
    torch.manual_seed(4)
    size = 64
    feats = torch.randn(1, 16, 16, 16)
    ref = upsampled(feats, size)
    templates = torch.stack([ref[:, 3, 2], ref[:, 40, 44]])  # pixels (x=2, y=3) and (x=44, y=40)
    start = torch.tensor([[0.4, 0.0], [41.6, 42.5]])  # centres round to (0, 0) and (42, 42)
    got = track_points(feats, start, templates, window_offsets(4), size)
    assert got.tolist() == [[2.0, 3.0], [44.0, 40.0]]


def reference_motion_loss(feats: torch.Tensor, points, targets, radius: float, size: int) -> float:
    ref = upsampled(feats, size)
    f = feats[0].numpy()
    total = 0.0
    for (px, py), (tx, ty) in zip(points, targets):
        d = np.array([tx - px, ty - py], dtype=np.float64)
        if np.linalg.norm(d) <= 1:
            continue
        d /= np.linalg.norm(d)
        terms = []
        for qy in range(size):
            for qx in range(size):
                if (qx - px) ** 2 + (qy - py) ** 2 < radius**2:
                    shifted = continuous_bilinear(f, qx + d[0], qy + d[1], size)
                    terms.append(np.abs(ref[:, qy, qx].numpy() - shifted).mean())
        total += float(np.mean(terms))
    return total


def test_motion_loss_value_matches_the_reference_formulation_at_borders_too() -> None:
    torch.manual_seed(5)
    size = 32
    feats = torch.randn(1, 6, 8, 8)
    points = [(0.0, 0.0), (31.0, 31.0), (15.0, 16.0), (20.0, 5.0)]
    targets = [(9.0, 4.0), (20.0, 31.0), (15.5, 16.5), (3.0, 27.0)]  # the third is within 1 px: no loss
    loss, dist = motion_loss(feats, torch.tensor(points), torch.tensor(targets), disc_offsets(3.0), size)
    assert loss.item() == pytest.approx(reference_motion_loss(feats, points, targets, 3.0, size), abs=1e-5)
    np.testing.assert_allclose(dist.numpy(), np.linalg.norm(np.subtract(targets, points), axis=1), atol=1e-5)


def test_motion_loss_has_zero_gradient_for_handles_within_one_pixel() -> None:
    torch.manual_seed(6)
    feats = torch.randn(1, 4, 16, 16, requires_grad=True)
    disc = disc_offsets(3.0)
    near = torch.tensor([[10.0, 10.0], [40.0, 30.0]])
    near_targets = torch.tensor([[11.0, 10.0], [40.5, 30.5]])  # distances 1 and 0.71
    loss, _ = motion_loss(feats, near, near_targets, disc, 64)
    (grad,) = torch.autograd.grad(loss, feats)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0
    far_targets = torch.tensor([[11.0, 10.0], [45.0, 30.0]])  # the second is now 5 px away
    loss, _ = motion_loss(feats, near, far_targets, disc, 64)
    (grad,) = torch.autograd.grad(loss, feats)
    assert loss.item() > 0 and torch.count_nonzero(grad) > 0
    # only the far handle's neighbourhood receives gradient: handle 0's cell stays untouched
    assert torch.count_nonzero(grad[0, :, 2, 2]) == 0


def test_motion_loss_gradient_flows_through_the_shifted_sample_only() -> None:
    torch.manual_seed(7)
    feats = torch.randn(1, 4, 16, 16, requires_grad=True)
    pts, tgt = torch.tensor([[30.0, 30.0]]), torch.tensor([[50.0, 30.0]])
    loss, _ = motion_loss(feats, pts, tgt, disc_offsets(1.0), 64)  # disc = the centre pixel only
    (grad,) = torch.autograd.grad(loss, feats)
    # F(q) is detached; F(q + d) = F at (31, 30) -> feature x = 7.375, y = 7.125: cells x 7..8, y 7..8
    nz = torch.nonzero(grad[0].abs().sum(0)).tolist()
    assert sorted(nz) == [[7, 7], [7, 8], [8, 7], [8, 8]]


def test_fixed_region_weight_is_the_area_average_of_the_complement() -> None:
    allowed = np.zeros((8, 8), dtype=bool)
    allowed[:, :4] = True  # left half may change
    allowed[0, 4] = True  # one extra pixel: a quarter of feature cell (0, 2)
    w = fixed_region_weight(allowed, 4, torch.device("cpu"))[0, 0].numpy()
    expected = np.array([[0, 0, 0.75, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.float32)
    np.testing.assert_allclose(w, expected)


def test_mask_loss_ignores_changes_in_the_allowed_region() -> None:
    f0 = torch.zeros(1, 2, 4, 4)
    fixed = torch.zeros(1, 1, 4, 4)
    fixed[..., 2:] = 1.0
    changed_allowed = f0.clone()
    changed_allowed[..., :2] = 5.0
    assert mask_loss(changed_allowed, f0, fixed).item() == 0.0
    changed_fixed = f0.clone()
    changed_fixed[..., 3] = 4.0
    assert mask_loss(changed_fixed, f0, fixed).item() == pytest.approx(4.0 * 8 / 32)


def test_motion_loss_active_distance_below_one_pixel() -> None:
    torch.manual_seed(8)
    feats = torch.randn(1, 4, 16, 16, requires_grad=True)
    pts, tgt = torch.tensor([[30.0, 30.0]]), torch.tensor([[30.7, 30.0]])
    assert motion_loss(feats, pts, tgt, disc_offsets(3.0), 64)[0].item() == 0.0  # default: 1 px
    loss, _ = motion_loss(feats, pts, tgt, disc_offsets(3.0), 64, active_distance=0.5)
    (grad,) = torch.autograd.grad(loss, feats)
    assert loss.item() > 0 and torch.count_nonzero(grad) > 0
    exact, _ = motion_loss(feats, pts, pts, disc_offsets(3.0), 64, active_distance=0.0)
    assert exact.item() == 0.0  # a handle on its target adds nothing even with 0
