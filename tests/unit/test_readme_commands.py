"""Every command in the README's `sh` blocks runs as written, in order, from the repository's
root, except the few listed in NOT_RUN_HERE with the reason. The only rewrites: `/tmp/` is
this test's own directory and port 8888 a free one, so that two runs cannot collide. The
servers (`agent run`, `scorer serve`) run until they say they serve, then get SIGTERM and must
stop cleanly."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.source_tree import outside_env, run_outside

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Commands this test does not run, each with where it runs or why it cannot.
NOT_RUN_HERE = {
    "./dev test": "the run this test is part of",
    "python3 -m venv ~/gpulet && ~/gpulet/bin/pip install .": "tests/unit/test_wheel.py "
    "installs from a clean copy into a fresh virtualenv and runs the demo from it",
    "~/gpulet/bin/gpulet demo": "tests/unit/test_wheel.py, from the install above",
    "LD_PRELOAD=$(.venv/bin/gpulet limiter path) GPULET_REGION_DIR=/tmp/box python3 train.py": (
        "needs a GPU and the user's program (bench/gpu_limiter.py is its check on a GPU)"
    ),
}
# Servers: what each prints once it serves.
SERVERS = {
    "gpulet agent run": "gpulet agent: serving",
    "gpulet scorer serve": "gpulet scorer serving on",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the `sh` blocks: continuations joined, comments dropped."""
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            command = " ".join((pending + line).split())
            pending = ""
            if command:
                commands.append(command)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(command: str, ready: str) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=ROOT,
        env=outside_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen.append(line)
            if ready in line or time.monotonic() > deadline:
                break
        assert any(ready in line for line in seen), f"{command}:\n{''.join(seen)}"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{''.join(seen)}{rest}"
    assert "Traceback" not in rest, rest


def test_the_readme_lists_what_this_test_skips() -> None:
    """A command dropped from the README leaves no stale exception here."""
    commands = readme_commands(README.read_text())
    assert set(NOT_RUN_HERE) <= set(commands), set(NOT_RUN_HERE) - set(commands)


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    port = str(_free_port())
    ran = 0
    for command in readme_commands(README.read_text()):
        if command in NOT_RUN_HERE:
            continue
        command = command.replace("/tmp/", f"{tmp_path}/").replace("8888", port)
        server = next((ready for name, ready in SERVERS.items() if name in command), None)
        if server is not None:
            _serve(command, server)
        else:
            proc = run_outside(["bash", "-c", command], ROOT)
            assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
            assert "Traceback" not in proc.stderr, f"{command}:\n{proc.stderr}"
        ran += 1
    assert ran >= 12, ran
