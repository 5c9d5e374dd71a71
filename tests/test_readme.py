"""The README's examples run as written: every ```python block, in order, against one 2-shard
SQLite cluster (the README's ``exdb cluster --shards 2 --base-port 5001``, here on free ports),
and every ``exdb`` command line of its "Use it with" section that ends by itself."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exdb.cluster import LocalCluster

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
_README_NODES = ("127.0.0.1:5001", "127.0.0.1:5002")


def _blocks(kind: str, section: str | None = None) -> list[str]:
    text = README.read_text(encoding="utf-8")
    if section is not None:
        start = text.index(section)
        end = text.find("\n## ", start + len(section))
        text = text[start : end if end >= 0 else len(text)]
    return [body for lang, body in _BLOCK.findall(text) if lang == kind]


def _commands() -> list[str]:
    """The one-shot ``exdb`` command lines of the "Use it with" section, and its ``export``
    lines (not the commands that wait for a person: ``exdb cluster``, a bare ``exdb shell``)."""
    lines = []
    for block in _blocks("sh", "## Use it with"):
        for raw in block.splitlines():
            line = raw.split("  #", 1)[0].strip()
            if line.startswith("export "):
                lines.append(line)
                continue
            if not line.startswith("exdb ") or line.startswith("exdb cluster"):
                continue
            words = shlex.split(line)
            if words[:2] == ["exdb", "shell"] and not {"-c", "-f"} & set(words):
                continue
            lines.append(line)
    return lines


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """A 2-shard SQLite cluster, and how to point the README's addresses at it."""
    with LocalCluster(2) as cluster:
        env = dict(os.environ)
        env.pop("EXDB_PASSWORD", None)
        env["README_NODES"] = ",".join(cluster.nodes)
        yield env, tmp_path_factory.mktemp("readme")


def _localise(text: str, env: dict[str, str]) -> str:
    for theirs, ours in zip(_README_NODES, env["README_NODES"].split(","), strict=True):
        text = text.replace(theirs, ours)
    return text


def test_readme_has_examples() -> None:
    assert len(_blocks("python")) >= 4
    assert _blocks("python", "## Use it with"), "the 'Use it with' section has no example"


def test_readme_examples_run_as_written(readme_env: tuple[dict[str, str], Path]) -> None:
    env, workdir = readme_env
    for i, block in enumerate(_blocks("python"), 1):
        code = _localise(block, env)
        first = code.splitlines()[0]
        if re.fullmatch(r"# (test_\w+\.py)", first):  # a test file: pytest runs it
            (workdir / first[2:]).write_text(code, encoding="utf-8")
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", first[2:]]
        else:
            command = [sys.executable, "-c", code]
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (
            f"README python block {i} failed:\n{block}\n{done.stdout}{done.stderr}"
        )
    bindir = Path(sys.executable).parent
    env = dict(env)
    for line in _commands():
        words = [_localise(w, env) for w in shlex.split(line)]
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            env[name] = value
            continue
        done = subprocess.run(
            [str(bindir / "exdb"), *words[1:]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"README command failed: {line}\n{done.stdout}{done.stderr}"
