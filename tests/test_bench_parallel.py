"""benchmarks/parallel.py --quick runs and its answers agree (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_parallel_benchmark_quick_mode_runs_and_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "parallel.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "results agree" in out
    for door in ("sequential DistributedConnection", "asyncio door", "nWorkers=4"):
        assert door in out
    assert "best parallel door" in out
