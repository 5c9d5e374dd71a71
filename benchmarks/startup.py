"""Start-up costs, each the best of N fresh processes, against baselines measured in the same run.

- ``import exdb``, timed inside a fresh interpreter, against ``import sqlite3`` and (if it is
  installed) ``import psycopg``;
- ``import exdb`` and a first statement on one node (sync door), and on two nodes (the
  distributed engine), against a running local cluster;
- whole processes: ``python -c pass`` (the floor), ``exdb --help``, ``exdb serve`` until it
  listens;
- the pytest plugin: a pytest run of one trivial test with the plugin and with ``-p no:exdb``;
  the difference is what the plugin adds to a project that does not use it. Measured with every
  other installed plugin blocked (``-p no:NAME``), and, unless --quick, also with all of them
  loaded, which is noisier: other plugins (hypothesis) take far longer than exdb's.

Each figure is given as wall time and as CPU time (user + system) of the timed part: on a
shared, loaded machine the CPU time is the steadier one. Python's bytecode cache is on (in a
temporary PYTHONPYCACHEPREFIX, filled by one untimed run of each command), as on a user's
machine, even where PYTHONDONTWRITEBYTECODE is set; ``--no-pyc`` keeps it off (every import
then compiles its source).

    python benchmarks/startup.py [--quick] [-n N] [--no-pyc]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exdb.cluster import LocalCluster

from _common import print_table

#: (wall ms, cpu ms)
Times = tuple[float, float]

_IN_PROCESS = """
import time
t0, c0 = time.perf_counter(), time.process_time()
{code}
print("elapsed", time.perf_counter() - t0, time.process_time() - c0)
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "EXDB_PASSWORD"}


def _set_env(pycache: str | None) -> None:
    """Every child process (the cluster's too): no import profiling; the bytecode cache in
    ``pycache`` (None: off)."""
    os.environ.pop("PYTHONPROFILEIMPORTTIME", None)
    if pycache is None:
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = pycache


def in_process(code: str) -> Times:
    """What ``code`` takes in a fresh interpreter, timed inside it."""
    out = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS.format(code=code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    if out.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {out.stderr.strip()}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("elapsed "))
    wall, cpu = line.split()[1:]
    return float(wall) * 1000, float(cpu) * 1000


def whole_process(
    cmd: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None
) -> Times:
    """What a whole process takes, from spawn to exit (exit status 0 required)."""
    full_env = {**_env(), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env=full_env)
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout[-500:]}")
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return wall, cpu


def serve_until_listening() -> Times:
    """From spawning ``exdb serve`` to its "listening" line (wall only: the server still
    runs); then it is stopped."""
    cmd = [sys.executable, "-m", "exdb", "serve", "--port", "0", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(60):
                raise RuntimeError("exdb serve did not start within 60 s")
        line = proc.stdout.readline()
        wall = (time.perf_counter() - t0) * 1000
        if not line.startswith("exdb serve: listening on "):
            raise RuntimeError(f"exdb serve did not start: {line!r}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    return wall, float("nan")


def best(fn: Callable[[], Times], n: int) -> Times:
    """The fastest wall and the least CPU of ``n`` runs (noise only ever adds time), after one
    untimed run that fills the bytecode cache."""
    fn()
    runs = [fn() for _ in range(n)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def best_pair(a: Callable[[], Times], b: Callable[[], Times], n: int) -> tuple[Times, Times]:
    """``best`` of two commands run in turn, so that a change in the machine's load between
    runs weighs on both alike."""
    a(), b()
    runs = [(a(), b()) for _ in range(n)]
    first, second = [r[0] for r in runs], [r[1] for r in runs]
    return (
        (min(t[0] for t in first), min(t[1] for t in first)),
        (min(t[0] for t in second), min(t[1] for t in second)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 processes per figure")
    ap.add_argument("-n", type=int, default=15, help="processes per figure (best is kept)")
    ap.add_argument("--no-pyc", action="store_true", help="no bytecode cache: imports compile")
    args = ap.parse_args(argv)
    n = 3 if args.quick else args.n
    with tempfile.TemporaryDirectory() as pycache:
        _set_env(None if args.no_pyc else pycache)
        return _run(n, args.quick, "off" if args.no_pyc else "on")


def _run(n: int, quick: bool, pyc: str) -> int:
    rows: list[list[object]] = []
    figures: dict[str, Times] = {}

    def add(name: str, times: Times, note: str = "") -> None:
        figures[name] = times
        rows.append([name, times[0], "-" if times[1] != times[1] else times[1], note])

    add("import sqlite3", best(lambda: in_process("import sqlite3"), n), "baseline")
    if importlib.util.find_spec("psycopg") is not None:
        add("import psycopg", best(lambda: in_process("import psycopg"), n), "baseline")
    add("import exdb", best(lambda: in_process("import exdb"), n), "goal <= 60 ms")

    with LocalCluster(2) as cluster:
        first = "import exdb\nc = exdb.connect({})\nc.execute('SELECT 1').fetchall()\nc.close()"
        one = first.format(repr(cluster.nodes[0]))
        two = first.format(f"nodes={list(cluster.nodes)!r}")
        add("import exdb, connect(1 node), SELECT", best(lambda: in_process(one), n))
        add("import exdb, connect(2 nodes), SELECT", best(lambda: in_process(two), n))

    floor = best(lambda: whole_process([sys.executable, "-c", "pass"]), n)
    add("process: python -c pass", floor, "floor")
    cli = best(lambda: whole_process([sys.executable, "-m", "exdb", "--help"]), n)
    add("process: exdb --help", cli, f"+{cli[1] - floor[1]:.0f} ms cpu over the floor")
    add("process: exdb serve until listening", best(serve_until_listening, n))

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pytest.ini").write_text("[pytest]\n")
        Path(tmp, "test_trivial.py").write_text("def test_trivial():\n    assert True\n")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        others = sorted({ep.name for ep in entry_points(group="pytest11")} - {"exdb"})
        alone = [*cmd, *(arg for name in others for arg in ("-p", f"no:{name}"))]
        bare, plugin = best_pair(
            lambda: whole_process([*alone, "-p", "no:exdb"], tmp),
            lambda: whole_process(alone, tmp),
            n,
        )
        add("pytest: trivial test, no plugin", bare, "baseline")
        added = plugin[0] - bare[0], plugin[1] - bare[1]
        note = f"{added[0]:+.1f} wall, {added[1]:+.1f} cpu (goal <= 20)"
        add("pytest: trivial test, exdb plugin only", plugin, note)
        if not quick:
            but, every = best_pair(
                lambda: whole_process([*cmd, "-p", "no:exdb"], tmp),
                lambda: whole_process(cmd, tmp),
                n,
            )
            add("pytest: trivial test, all plugins but exdb", but, "baseline")
            note = f"{every[0] - but[0]:+.1f} wall, {every[1] - but[1]:+.1f} cpu"
            add("pytest: trivial test, all plugins", every, note)

    title = f"Start-up (ms, best of {n} fresh processes; bytecode cache {pyc})"
    print_table(title, ["what", "wall ms", "cpu ms", "note"], rows)
    exdb_t, ratios = figures["import exdb"], []
    for base in ("import sqlite3", "import psycopg"):
        if base in figures:
            wall, cpu = (exdb_t[i] / figures[base][i] for i in (0, 1))
            ratios.append([f"import exdb / {base}", wall, cpu])
    print_table("Ratios", ["ratio", "wall", "cpu"], ratios)
    print(f"\nimport exdb: {exdb_t[0]:.1f} ms wall, {exdb_t[1]:.1f} ms cpu (goal <= 60 ms)")
    print(f"pytest plugin adds: {added[0]:.1f} ms wall, {added[1]:.1f} ms cpu (goal <= 20 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
