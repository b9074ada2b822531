"""`draggan bench quality` on a tiny random generator and a random landmark detector (CPU smoke test).

The numbers mean nothing here; the tests check the protocol's plumbing: every (points, variant)
row is there, values are finite and in range, steps respect the cap, the parallel path gives the
same results, and bad input fails with a clear message.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from daemon.bench_quality import (
    POINT_SUBSETS,
    VARIANTS,
    BenchError,
    QualityConfig,
    allowed_region,
    mean_abs_outside,
    run_quality_bench,
)
from daemon.cli import main

TINY_CONFIG = dict(
    z_dim=64,
    c_dim=0,
    w_dim=64,
    img_resolution=64,
    img_channels=3,
    channel_base=512,
    channel_max=32,
    mapping_kwargs={"num_layers": 2},
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from stylegan2 import Generator
    from stylegan2.model_file import save_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        G = Generator(**TINY_CONFIG)
    path = tmp_path_factory.mktemp("bench") / "tiny-64.safetensors"
    save_generator(G, path)
    return path


def _random_detector(path, visibility_bias: float = 2.0):
    """A fresh detector with sharpened heatmaps, so its (meaningless) landmarks differ between images."""
    import torch

    from stylegan2.landmarks import LandmarkDetector, save_detector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = LandmarkDetector(width=8, input_size=32)
    with torch.no_grad():
        model.heatmap.weight.mul_(400.0)
        model.visibility.bias.fill_(visibility_bias)
    save_detector(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    return _random_detector(tmp_path_factory.mktemp("bench") / "det.safetensors")


def _config(model, detector, **kw) -> QualityConfig:
    base = dict(model=str(model), landmarks=str(detector), pairs=2, max_steps=3, device="cpu")
    base.update(kw)
    return QualityConfig(**base)


def test_cudagraph_variant_needs_cuda(tiny_model, tiny_detector):
    cfg = _config(tiny_model, tiny_detector, variants=("plain", "cudagraph"))
    cfg.validate()  # the device is known only once resolved ("auto" may be CUDA)
    with pytest.raises(BenchError, match="cudagraph variant needs a CUDA device"):
        run_quality_bench(cfg, log=lambda s: None)


def test_cli_quality_writes_table_and_json(tiny_model, tiny_detector, tmp_path, capsys):
    out, js = tmp_path / "q.md", tmp_path / "q.json"
    args = ["--model", str(tiny_model), "--landmarks", str(tiny_detector), "--pairs", "2", "--max-steps", "3"]
    rc = main(["bench", "quality", *args, "--device", "cpu", "--out", str(out), "--json", str(js)])
    assert rc == 0
    data = json.loads(js.read_text())
    rows = data["rows"]
    # The default variants: every one but cudagraph, which needs CUDA.
    defaults = ("plain", "nearest", "l2", "mask", "batched")
    assert set(VARIANTS) - set(defaults) == {"cudagraph", "split"}
    expected = [(p, v) for p in (1, 5, 10) for v in defaults]
    assert [(r["points"], r["variant"]) for r in rows] == expected
    assert len(data["records"]) == 2 * len(expected)
    for r in rows:
        assert r["edits"] == 2
        for key in ("no_edit_px", "after_px", "tracked_px", "seconds_per_edit", "ms_per_step"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["mad_outside"] is None or 0 <= r["mad_outside"] <= 255
        assert 1 <= r["steps_mean"] <= 3
        assert 0 <= r["converged"] <= 1
        assert r["target_ratio"] == {1: 0.15, 5: 0.25, 10: 0.25}[r["points"]]
    for rec in data["records"]:
        assert 1 <= rec["steps"] <= 3
        assert rec["after_px"] <= 64 * math.sqrt(2)
    # the random detector puts landmarks at different places on different images: real drags happened
    assert any(rec["no_edit_px"] > 1 for rec in data["records"])
    # same handles and targets for every variant of one (pair, points)
    for p in (1, 5, 10):
        per_pair = {}
        for rec in data["records"]:
            if rec["points"] == p:
                per_pair.setdefault(rec["pair"], set()).add(round(rec["no_edit_px"], 6))
        assert all(len(v) == 1 for v in per_pair.values())
    md = out.read_text()
    assert md.startswith("`draggan bench quality --model ")
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| points")]
    assert len(table) == len(expected)
    assert "ratio" in md and "MAD outside mask" in md
    assert md in capsys.readouterr().out


def test_batched_variant_gives_the_plain_edit(tiny_model, tiny_detector):
    """Stepped in a batch with other drags, an edit follows its own trajectory (up to rounding)."""
    cfg = _config(tiny_model, tiny_detector, pairs=2, points=(5,), variants=("plain", "batched"), max_steps=4)
    records = run_quality_bench(cfg).records
    plain = {r.pair: r for r in records if r.variant == "plain"}
    for r in (r for r in records if r.variant == "batched"):
        assert r.steps == plain[r.pair].steps
        assert r.tracked_px == pytest.approx(plain[r.pair].tracked_px, abs=1e-6)
        assert r.after_px == pytest.approx(plain[r.pair].after_px, abs=0.5)


def test_workers_give_the_same_results_as_one_process(tiny_model, tiny_detector):
    kw = dict(pairs=2, points=(5,), variants=("plain",), max_steps=3)
    single = run_quality_bench(_config(tiny_model, tiny_detector, **kw), log=lambda s: None)
    multi = run_quality_bench(_config(tiny_model, tiny_detector, workers=2, **kw), log=lambda s: None)
    key = [(r.pair, r.points, r.variant, r.steps) for r in single.records]
    assert key == [(r.pair, r.points, r.variant, r.steps) for r in multi.records]
    for a, b in zip(single.records, multi.records):
        assert a.no_edit_px == b.no_edit_px
        assert a.after_px == pytest.approx(b.after_px, abs=1e-3)
        assert a.mad_outside == pytest.approx(b.mad_outside, abs=1e-3)


def test_pairs_need_visible_landmarks(tiny_model, tmp_path):
    hidden = _random_detector(tmp_path / "hidden.safetensors", visibility_bias=-10.0)
    with pytest.raises(BenchError, match="only 0 of 3 candidate pairs have all 10 landmarks visible"):
        run_quality_bench(_config(tiny_model, hidden, max_candidates=3), log=lambda s: None)


def test_allowed_region_is_the_union_of_discs():
    allowed = allowed_region(np.array([[10.0, 10.0]]), np.array([[40.0, 20.0]]), 5.0, 64)
    assert allowed[10, 15] and allowed[10, 5] and allowed[15, 10]  # (row, col): distance 5 from (10, 10)
    assert not allowed[10, 16] and not allowed[16, 10]
    assert allowed[20, 40] and allowed[20, 45] and not allowed[20, 46]
    assert not allowed[0, 63]
    assert allowed.sum() == 2 * 81  # 81 integer points within radius 5, discs apart


def test_mean_abs_outside_ignores_the_allowed_region():
    before = np.zeros((4, 4, 3), np.uint8)
    after = before.copy()
    after[0, 0] = 200  # inside the allowed region: ignored
    after[3, 3] = 30  # outside
    allowed = np.zeros((4, 4), bool)
    allowed[0, 0] = True
    assert mean_abs_outside(before, after, allowed) == pytest.approx(30 * 3 / (15 * 3))
    assert math.isnan(mean_abs_outside(before, after, np.ones((4, 4), bool)))


def test_point_subsets_are_fixed_and_nested():
    assert POINT_SUBSETS[1] == ("nose_tip",)
    assert set(POINT_SUBSETS[1]) < set(POINT_SUBSETS[5]) < set(POINT_SUBSETS[10])
    assert len(POINT_SUBSETS[5]) == 5 and len(POINT_SUBSETS[10]) == 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pairs": 0}, "pairs must be >= 1"),
        ({"points": (1, 3)}, "points must be a subset of"),
        ({"variants": ("plain", "fast")}, "variants must be a subset of"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"psi": 1.5}, "psi must be in"),
        ({"mask_radius": -1.0}, "mask_radius must be > 0"),
        ({"workers": 0}, "workers must be >= 1"),
    ],
)
def test_bad_config_is_rejected(changes, message):
    with pytest.raises(BenchError, match=message):
        QualityConfig(model="m", landmarks="l", **changes).validate()


def test_cli_reports_missing_files_clearly(tiny_model, tiny_detector, tmp_path, capsys):
    missing = tmp_path / "none.safetensors"
    assert main(["bench", "quality", "--model", str(missing), "--landmarks", str(tiny_detector)]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    rc = main(
        ["bench", "quality", "--model", str(tiny_model), "--landmarks", str(missing), "--device", "cpu"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "no such landmark-detector file" in err and "draggan train-landmarks" in err


def test_cli_rejects_malformed_lists(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "quality", "--points", "1,x"])
    assert e.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err
