"""`draggan bench speed` on CPU: the harness end to end on the tiny config, its argument checks, and
the reference formulation against our engine (the same method, so the same numbers up to known
interpolation differences: a strong check of both)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from daemon import bench_speed
from daemon.bench_reference import ReferenceDrag
from engine import DragParams, DragSession, latent_from_seed


@pytest.fixture(scope="module")
def tiny():
    G = bench_speed.build_generator("tiny", torch.device("cpu"))
    return G, latent_from_seed(G, 3)


def _row_cells(text: str, *first: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no table row starting with {first} in:\n{text}")


def test_harness_runs_both_implementations_and_prints_the_table(tmp_path, capsys):
    args = ["--device", "cpu", "--configs", "tiny", "--handles", "2", "--masks", "off,on"]
    args += ["--steps", "1", "--ref-steps", "1", "--warmup", "0", "--check-steps", "2"]
    args += ["--out", str(tmp_path)]
    assert bench_speed.main(args) == 0
    out = capsys.readouterr().out
    header = _row_cells(out, "model")
    assert header == list(bench_speed.TIMING_COLUMNS)
    for mask in ("off", "on"):
        for impl in ("reference", "eager"):
            cells = _row_cells(out, "tiny", "2", mask, impl)
            median, p90, first = (float(c) for c in cells[4:7])
            assert 0 < median <= p90 and first > 0
            assert float(cells[8]) > 0  # reference ÷ this
    assert "cudagraph" not in out.split("### FLOP floor")[0]  # CUDA-only variants are skipped on CPU
    floor = _row_cells(out.split("### FLOP floor")[1], "tiny")
    assert float(floor[1]) > 0 and float(floor[2]) >= float(floor[1])  # the reference does more work
    checks = out.split("### Fast paths vs eager")[1]
    baseline = _row_cells(checks, "tiny", "eager")  # eager vs eager: bit-identical on CPU
    assert baseline[2:7] == ["2", "0.0e+00", "1.000000", "100%", "0.0e+00"]
    bf16 = _row_cells(checks, "tiny", "eager-bf16")
    assert 0 < float(bf16[3]) < 0.15 and 0 < float(bf16[4]) <= 1
    report = json.loads((tmp_path / "speed.json").read_text())
    assert {t["impl"] for t in report["timings"]} == {"reference", "eager", "eager-bf16"}
    assert (tmp_path / "speed.md").read_text().startswith("device: cpu")
    assert re.search(r"model tiny: weights \d+ MiB, frozen-layer constants \d+ MiB", out)


def test_batch_and_preview_rows(capsys):
    args = ["--device", "cpu", "--configs", "tiny", "--handles", "5", "--masks", "off", "--impls", "eager"]
    args += ["--extra-impls", "eager-split", "--steps", "2", "--warmup", "0", "--check-steps", "2"]
    args += ["--batch-sessions", "2", "--batch-variants", "eager,eager-split", "--preview-sizes", "64"]
    args += ["--preview-variants", "eager", "--preview-every", "1"]
    assert bench_speed.main(args) == 0
    out = capsys.readouterr().out
    split = _row_cells(out.split("### Fast paths vs eager")[1], "tiny", "eager-split")
    assert float(split[4]) > 0.999 and split[5] == "100%"  # same trajectory as fused, up to rounding
    batches = out.split("### Concurrent sessions")[1]
    for variant in ("eager", "eager-split"):
        cells = _row_cells(batches, "tiny", "2", variant)
        one, batched, per = (float(c) for c in cells[3:6])
        assert one > 0 and batched > 0 and per == pytest.approx(batched / 2, rel=1e-2)
    preview = _row_cells(out.split("### Preview frames")[1], "tiny", "eager", "64", "1")
    assert all(float(c) > 0 for c in preview[4:7]) and preview[7] == "0"  # async frame == render()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sessions", "two"], "--batch-sessions"),
        (["--preview-sizes", "-1"], "--preview-sizes"),
        (["--configs", "2048"], "unknown config"),
        (["--impls", "reference,turbo"], "unknown implementation"),
        (["--handles", "0"], "--handles"),
        (["--masks", "maybe"], "--masks"),
        (["--steps", "0"], "--steps"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    assert bench_speed.main(args) == 2
    assert message in capsys.readouterr().err


def _pair(tiny, handles, targets, allowed=None):
    G, latent = tiny
    ref = ReferenceDrag(G, latent, handles, targets, None if allowed is None else ~allowed, exact_grid=True)
    eng = DragSession(G, latent, handles, targets, allowed, DragParams(tracking="l2", stop_distance=0.0))
    return ref, eng


def _first_update(latent: torch.Tensor, after: np.ndarray) -> np.ndarray:
    return (after - latent[0].numpy())[:6].ravel()


def test_reference_and_engine_agree_when_shifts_land_on_pixels(tiny):
    """Axis-aligned drags shift Ω1 by whole pixels, where the reference's bilinear-of-bilinear
    sample equals our direct sample: same loss, same gradient signs, same tracking next step."""
    handles = np.array([[100.0, 120.0], [150.0, 90.0], [60.0, 180.0], [200.0, 60.0]])
    targets = handles + np.array([[20.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -30.0]])
    ref, eng = _pair(tiny, handles, targets)
    a, b = ref.step(), eng.step()
    np.testing.assert_array_equal(a.points, b.points)
    assert float(a.loss) == pytest.approx(b.loss, rel=1e-4)
    b2 = eng.step()  # the engine's latent() lags one update behind (image and points belong together)
    da, db = _first_update(tiny[1], ref.latent()), _first_update(tiny[1], eng.latent())
    assert np.abs(da).max() > 0
    assert (np.sign(da) == np.sign(db)).mean() > 0.99
    a2 = ref.step()
    np.testing.assert_array_equal(a2.points, b2.points)  # tracking on the updated latent agrees
    assert not np.array_equal(a2.points, handles)  # ... and actually moved something


def test_reference_and_engine_agree_approximately_on_diagonal_drags(tiny):
    """Fractional shifts: the reference interpolates the upsampled map (bilinear of bilinear), we
    sample the feature map directly; the loss differs by about 1 %, the gradient hardly."""
    handles = np.array([[100.0, 120.0], [150.0, 90.0], [60.0, 180.0]])
    targets = handles + np.array([[20.0, 5.0], [-15.0, 10.0], [10.0, -20.0]])
    ref, eng = _pair(tiny, handles, targets)
    a, b = ref.step(), eng.step()
    np.testing.assert_array_equal(a.points, b.points)
    assert float(a.loss) == pytest.approx(b.loss, rel=0.05)
    eng.step()
    da, db = _first_update(tiny[1], ref.latent()), _first_update(tiny[1], eng.latent())
    assert da @ db / np.linalg.norm(da) / np.linalg.norm(db) > 0.9


def test_mask_terms_agree_approximately(tiny):
    """The reference's mask term on the full-resolution map vs ours at feature resolution."""
    handles = np.array([[100.0, 120.0], [150.0, 90.0]])
    targets = handles + np.array([[20.0, 0.0], [0.0, 10.0]])
    ref, eng = _pair(tiny, handles, targets, bench_speed.make_allowed_mask(256))
    losses = [(float(ref.step().loss), eng.step().loss) for _ in range(2)]
    assert losses[0][0] == pytest.approx(losses[0][1], rel=1e-4)  # F = F0 at step 1: no mask term yet
    assert losses[1][0] > 2 * losses[0][0]  # the mask term dominates at step 2 ...
    assert losses[1][0] == pytest.approx(losses[1][1], rel=0.02)  # ... and both formulations agree


def test_reference_distance_grid_quirk_moves_the_disc(tiny):
    """The faithful mode keeps linspace(0, h, h): near the bottom-right the disc is a pixel off,
    so the loss differs from the exact-grid (engine-equal) formulation."""
    G, latent = tiny
    handles = np.array([[220.0, 220.0]])
    targets = np.array([[200.0, 220.0]])
    faithful = ReferenceDrag(G, latent, handles, targets, exact_grid=False)
    exact = ReferenceDrag(G, latent, handles, targets, exact_grid=True)
    assert float(faithful.step().loss) != pytest.approx(float(exact.step().loss), rel=1e-3)
