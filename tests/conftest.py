"""Shared test set-up.

Labs started by the tests live in a private runtime directory of this session, so they
never meet the user's own labs; built images come from the usual cache (or
$KVMLAB_CACHE_DIR), so a second run does not rebuild them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_runtime(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("rt")
    old = os.environ.get("KVMLAB_RUNTIME_DIR")
    os.environ["KVMLAB_RUNTIME_DIR"] = str(runtime)
    yield runtime
    # Whatever a failing test left running is stopped here: no QEMU outlives the tests.
    labs = runtime / "labs"
    if labs.is_dir():
        for lab in labs.iterdir():
            if (lab / "lab.json").exists():
                subprocess.run([sys.executable, "-m", "lab.cli", "down", "--name", lab.name],
                               capture_output=True, timeout=60)
    if old is None:
        os.environ.pop("KVMLAB_RUNTIME_DIR", None)
    else:
        os.environ["KVMLAB_RUNTIME_DIR"] = old


def kvmlab(*args: str, timeout: float = 600, env: dict | None = None,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    """Runs the real `kvmlab` command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, input=input)


def qemu_pids_in(directory: Path) -> list[int]:
    """QEMU processes whose command line mentions `directory` (a lab's or a runtime's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "qemu-system" in cmdline and str(directory) in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
