"""benchmarks/copy_import.py at a tiny size runs end to end and its loads agree.

Timings are never asserted (this machine is shared and noisy): only the benchmark's own checks
(each load holds the file's row count and sums) and its output. Where PostgreSQL is not
installed, its row says so and the goal is not judged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(330)
def test_copy_import_benchmark_tiny_run_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "copy_import.py"), "--rows", "3000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "RESULTS DISAGREE" not in out
    assert "results agree: every load holds the file's rows" in out
    assert "exdb copy_from, 2 sqlite shards" in out and "exdb copy_from, 2 duckdb shards" in out
    if "PostgreSQL not available" in out:
        assert "goal sqlite: not judged" in out and "goal duckdb: not judged" in out
    else:
        assert "goal sqlite: " in out and "x PostgreSQL" in out
