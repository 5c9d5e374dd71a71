"""benchmarks/compare.py --quick runs end to end and its answers agree.

Timings are never asserted (this machine is shared and noisy): only the suite's own result
checks (row counts, checksums, exdb against PostgreSQL and the in-process floors), the shape of
its output, and that PostgreSQL rows are either measured or say 'not available'. The quick mode
never installs anything: only ``make bench`` (``--install-postgres``) does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
WORKLOADS = ["W1 point writes", "W2 point reads", "W3 bulk load", "W4 analytics", "W5 large result"]


def _run_quick(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "docs"
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(BENCH / "compare.py"), "--quick", "--out", str(out)]
    result = subprocess.run(
        [*cmd, "--json", str(report), *extra],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "RESULTS DISAGREE" not in result.stdout
    assert "results agree: " in result.stdout
    data = json.loads(report.read_text())
    assert data["quick"] is True
    assert data["checks_passed"] > 100  # counts, checksums, every point read, every query
    markdown = (out / "benchmarks.md").read_text()
    for needle in ["## The machine", "## Goals", "## Scaling", "benchmarks/compare.py --quick"]:
        assert needle in markdown, needle
    for workload in WORKLOADS:
        assert f"### {workload}" in markdown, workload
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result.stdout, data


def _check_exdb_and_floor_rows(data: dict[str, Any]) -> None:
    results = data["results"]
    for workload in WORKLOADS:
        rows = [r for r in results if r["workload"] == workload]
        exdb_rows = [r for r in rows if r["kind"] == "exdb"]
        floors = [r for r in rows if r["kind"] == "in-process"]
        assert exdb_rows and floors, workload
        assert all(r["value"] is not None and r["value"] > 0 for r in exdb_rows + floors), workload
    engines = {r["engine"] for r in results if r["kind"] == "exdb"}
    assert engines == {"sqlite", "duckdb"}
    w4 = {r["case"] for r in results if r["workload"] == "W4 analytics"}
    assert len(w4) == 3
    assert sorted(data["scaling"]) == ["1", "2", "3", "4"]
    for figures in data["scaling"].values():
        assert figures["aggregate s"] > 0 and figures["W1 statements/s"] > 0


def _postgres_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["results"] if r["kind"] == "PostgreSQL"]


@pytest.mark.timeout(450)
def test_compare_quick_runs_and_agrees(tmp_path: Path) -> None:
    """Whatever this machine has: PostgreSQL rows are measured, or every one says why not."""
    stdout, data = _run_quick(tmp_path)
    _check_exdb_and_floor_rows(data)
    pg_rows = _postgres_rows(data)
    assert {r["workload"] for r in pg_rows} == set(WORKLOADS)
    if data["postgres"]["available"]:
        assert all(r["value"] is not None and r["value"] > 0 for r in pg_rows)
        assert "results agree: exdb, PostgreSQL and the in-process floors" in stdout
        assert not any(g["verdict"].startswith("not judged") for g in data["goals"])
    else:
        assert all(r["value"] is None for r in pg_rows)
        assert "not available" in stdout


@pytest.mark.timeout(450)
def test_compare_quick_without_postgres_says_not_available(tmp_path: Path) -> None:
    """The path of a machine without PostgreSQL: its rows stay, saying 'not available'."""
    stdout, data = _run_quick(tmp_path, "--without-postgres")
    _check_exdb_and_floor_rows(data)
    pg_rows = _postgres_rows(data)
    assert {r["workload"] for r in pg_rows} == set(WORKLOADS)
    assert all(r["value"] is None and "--without-postgres" in r["note"] for r in pg_rows)
    assert all(g["verdict"].startswith("not judged") for g in data["goals"])
    markdown = (tmp_path / "docs" / "benchmarks.md").read_text()
    # Every PostgreSQL row of the results tables says so (other sections may say it too).
    assert markdown.count("| not available |") >= len(pg_rows)
    assert "PostgreSQL not available" in stdout


def test_find_postgres_without_install_never_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the server programs missing and install=False, nothing is run: the reason says how
    to get PostgreSQL."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _postgres

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"find_postgres ran a command: {args}")

    monkeypatch.setattr(_postgres, "_bindir", lambda: None)
    monkeypatch.setattr(_postgres.subprocess, "run", refuse)
    status = _postgres.find_postgres(install=False)
    assert not status.available
    if "psycopg" in status.reason:  # psycopg itself is missing (no bench extra)
        assert "exdb[bench]" in status.reason
    else:
        assert "apt-get install postgresql" in status.reason
