"""The benchmarks still run: each on a tiny workload (`make bench-short`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about two minutes on a busy machine; CI runs the slow tier too

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_every_benchmark_runs_in_short_mode(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--short"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = {line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line[:3] == "== "}
    scripts = {p.name for p in BENCH.glob("*.py")} - {"run_all.py"}
    assert ran == scripts
