"""The Arrow benchmark runs end to end at a tiny size on both engines and its answers agree.

Timings are never asserted (the machine is shared and noisy); only the benchmark's own result
checks (row counts, key sums and, at this size, every row against fetchall()) and its output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("pyarrow")


@pytest.mark.timeout(330)
def test_arrow_benchmark_tiny_runs_and_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "arrow.py"), "--rows", "3000", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "DISAGREE" not in out
    assert "results agree (duckdb)" in out and "results agree (sqlite)" in out
    for line in (
        "fetchall() (rows)",
        "fetch_arrow_table() (Arrow IPC)",
        "in-process duckdb .arrow() (floor)",
        "arrow/fetchall (duckdb)",
        "arrow/fetchall (sqlite)",
        "goal duckdb (arrow >= 5x fetchall)",
    ):
        assert line in out, line
