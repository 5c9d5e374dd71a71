"""The scatter benchmark's quick mode runs end to end on both engines and its answers agree.

Timings are never asserted: this machine is shared and noisy; only the benchmark's own result
checks (exdb on 1 and 2 shards against the in-process floor) and its output shape are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(330)
def test_scatter_benchmark_quick_mode_runs_and_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scatter.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "RESULTS DISAGREE" not in out
    assert out.count("results agree: ") == 2  # one line per engine
    for header in (
        "Load (sqlite)",
        "Load (duckdb)",
        "Medians (sqlite",
        "Medians (duckdb",
        "exdb 1 shard",
        "exdb 2 shards",
        "1 shard/floor",
        "2 shards/floor",
        "speedup 1->2",
        "GROUP BY aggregate",
        "ORDER BY ... LIMIT 10",
        "point SELECT by key",
    ):
        assert header in out, header
    assert "goal sqlite: " in out and "goal duckdb: " in out
