"""Run SQLAlchemy's dialect compliance suite against exdb on 1 node and on 2 nodes, and, as the
baseline, against one plain SQLite database (Python's sqlite3) with the same requirements class;
print the pass, fail and skip counts of each, and the tests that fail on exdb but not on plain
SQLite (``make sqla-suite``; extra arguments go to pytest)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from exdb.cluster import LocalCluster

HERE = os.path.dirname(os.path.abspath(__file__))


def _url(nodes: tuple[str, ...]) -> str:
    if len(nodes) == 1:
        return f"exdb://{nodes[0]}/"
    return f"exdb:///?nodes={','.join(nodes)}"


def run(shards: int, extra: list[str]) -> tuple[dict[str, int], set[str]]:
    """One run of the suite on a fresh in-memory cluster (0 shards: plain sqlite3); the counts
    from its JUnit report, and the names of the tests that failed."""
    cluster = LocalCluster(shards) if shards else None
    with tempfile.TemporaryDirectory() as tmp:
        if cluster is not None:
            cluster.start()
        url = _url(cluster.nodes) if cluster is not None else f"sqlite:///{tmp}/plain.db"
        try:
            return _pytest(url, os.path.join(tmp, "junit.xml"), extra, tmp)
        finally:
            if cluster is not None:
                cluster.stop()


def _pytest(url: str, report: str, extra: list[str], cwd: str) -> tuple[dict[str, int], set[str]]:
    """Run the suite on one URL; (counts, names of the failed tests)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        os.path.join(HERE, "setup.cfg"),
        "--rootdir",
        HERE,
        f"--dburi={url}",
        f"--junitxml={report}",
        "-q",
        "-p",
        "no:exdb",
        os.path.join(HERE, "test_suite.py"),
        *extra,
    ]
    subprocess.run(command, cwd=cwd, check=False)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    names = set()
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            # The class name carries the dialect and version: keep the test's own part.
            test_class = case.get("classname", "").rsplit(".", 1)[-1].split("_sqlite")[0]
            names.add(f"{test_class}::{case.get('name')}")
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}, names


def main() -> int:
    """The three runs; exit status 1 if a test fails on exdb but not on plain SQLite."""
    extra = sys.argv[1:]
    results = {shards: run(shards, extra) for shards in (0, 1, 2)}
    baseline = results[0][1]
    for shards, (counts, failed) in results.items():
        what = f"exdb, {shards} node(s)" if shards else "plain SQLite (sqlite3), the baseline"
        print(
            f"SQLAlchemy compliance suite, {what}: {counts['passed']} passed,"
            f" {counts['failed']} failed, {counts['skipped']} skipped"
        )
        for name in sorted(failed - baseline) if shards else ():
            print(f"    fails on exdb only: {name}")
    return 1 if any(failed - baseline for _, failed in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
