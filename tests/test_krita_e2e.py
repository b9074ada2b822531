"""End-to-end: the installed plugin in real Krita under Xvfb, against a real daemon.

Runs tests/krita_e2e/run_e2e.py (install.py into an isolated HOME, a CPU daemon on the small
model, two Krita sessions driven by tests/krita_e2e/driver). Not skipped when Krita is
missing: CI installs it (`apt-get install -y krita python3-pyqt5 xvfb xauth`), so a missing
Krita is a failure with that instruction.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "krita_e2e" / "run_e2e.py"


@pytest.mark.krita
@pytest.mark.slow
def test_plugin_end_to_end_in_real_krita(small_model_path, tmp_path):
    missing = [tool for tool in ("krita", "xvfb-run") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: the Krita end-to-end test needs real Krita under Xvfb. "
            "Install with `apt-get install -y krita python3-pyqt5 xvfb xauth`",
            pytrace=False,
        )
    result = subprocess.run(
        [sys.executable, str(RUNNER), "--model", str(small_model_path), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200,
    )
    print(result.stdout[-20000:])
    summary = json.loads((tmp_path / "summary.json").read_text())
    failed = [
        f"phase {phase}: {c['name']}: {c['detail']}"
        for phase, r in summary["phases"].items() for c in r.get("checks", []) if not c["ok"]
    ]
    assert result.returncode == 0 and summary["passed"], (
        f"E2E failed: {summary.get('error')} {failed} "
        + " ".join(str(r.get("error")) for r in summary["phases"].values() if r.get("error"))
        + f"\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
    assert set(summary["phases"]) == {"1", "2"}
    timings = summary["phases"]["1"]["timings"]
    assert timings["mask_ratio"] >= 1.5 and timings["mask_outside_reduction"] >= 2.0
