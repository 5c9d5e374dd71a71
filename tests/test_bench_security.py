"""benchmarks/security.py --quick runs end to end (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_security_benchmark_quick_mode_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "security.py"), "--quick", "--without-postgres"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in ("exdb, SCRAM-SHA-256", "exdb/echo (sqlite)", "beside the runaways"):
        assert section in out
    cut = int(out.split("runaway statements cut by the timeout:")[1].split()[0])
    assert cut >= 1, out  # --statement-timeout really cut the runaway statements
