"""README runs as printed: every shell command of its fenced blocks (and notebooks/README.md's), in order.

The fast tests check that every command is either run by the slow test or named in ``NOT_RUN`` with the
reason, and that every ``stlake`` command parses with today's flags. The slow test runs them all in one
bash session, in a scratch folder that links the repository's ``.venv``, ``jobs`` and ``notebooks``.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from stlake import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "notebooks/README.md")
LINKED = (".venv", "jobs", "notebooks", "lib")

#: Commands that cannot run as printed in a test, by a pattern they match, and why.
NOT_RUN = {
    r"^make (demo|test)": "the test runs inside what `make` builds (it would run itself)",
    r"^make (venv|demo-s3|bench|terraform-check|test-slow)": "builds or long suites of their own (CI runs them)",
    r"^make notebooks-docs": "rewrites the committed executed notebooks (test_notebooks executes them)",
    r"s3://bucket": "needs a real bucket (the S3 pipeline test runs these steps against a local S3 server)",
    r"^torchrun --nproc-per-node 8": "needs 8 processes / GPUs (test_train runs torchrun with 2 CPU ranks)",
    r"jupyter lab": "starts a server; the test checks that `jupyter lab --version` works instead",
}


def fenced_commands(path: Path) -> list[str]:
    """The shell commands of a Markdown file's ```bash blocks, continuation lines joined, in order."""
    commands, block, joined = [], None, ""
    for line in path.read_text().splitlines():
        fence = re.match(r"^```(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block not in ("bash", "sh", "shell"):
            continue
        text = joined + line
        if text.rstrip().endswith("\\"):
            joined = text.rstrip()[:-1] + " "
            continue
        joined = ""
        if text.strip() and not text.lstrip().startswith("#"):
            commands.append(text.strip())
    return commands


def all_commands() -> list[tuple[str, str]]:
    """(document, command) for every document, in order."""
    return [(doc, command) for doc in DOCS for command in fenced_commands(ROOT / doc)]


def why_not_run(command: str) -> str | None:
    """The reason a command is not run, or None when the slow test runs it."""
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def test_readme_commands_are_found_and_each_is_run_or_excused():
    commands = all_commands()
    run = [c for _, c in commands if why_not_run(c) is None]
    assert len(commands) >= 15 and len(run) >= 12, commands
    assert any(c.startswith("source .venv/bin/activate") for c in run)
    assert any(c.startswith("stlake stream") and "--shard-count 4" in c for c in run)
    for pattern in NOT_RUN:  # every excuse is still needed
        assert any(re.search(pattern, c) for _, c in commands), pattern


@pytest.mark.parametrize("command", sorted({c for _, c in all_commands() if c.startswith("stlake ")}))
def test_every_stlake_command_of_the_readme_parses(command):
    words = shlex.split(command, comments=True)
    if words[1:] == ["--version"]:
        return
    args = cli.build_parser().parse_args(words[1:])
    assert callable(args.run)


def readme_script(commands: list[str]) -> str:
    """One bash session: each command announced on stderr, the first failure ends it."""
    lines = ["set -eo pipefail"]
    for number, command in enumerate(commands):
        lines.append(f"echo '>>> [{number}] {command[:200].replace(chr(39), '')}' >&2")
        lines.append(command)
    lines.append("jupyter lab --version >/dev/null")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_readme_runs_as_printed(tmp_path):
    """Every runnable command of README.md and notebooks/README.md, in order, against the demo data."""
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    commands = [c for _, c in all_commands() if why_not_run(c) is None]
    script = tmp_path / "readme.sh"
    script.write_text(readme_script(commands))
    env = {**os.environ, "STLAKE_NB_WORKDIR": str(tmp_path / "nb")}
    env.pop("STLAKE_SPARK_LOG_LEVEL", None)
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                            env=env)
    ran = [line for line in result.stderr.splitlines() if line.startswith(">>> [")]
    assert result.returncode == 0, f"failed at {ran[-1] if ran else '?'}:\n{result.stderr[-4000:]}"
    assert len(ran) == len(commands)
    assert "samples/s" in result.stdout and "pairs: version" in result.stdout
    assert "Traceback" not in result.stderr
