"""L1's /kvmlab/run (images/l1/rootfs/kvmlab/run) where its share never comes: run by L1's
own busybox sh under qemu-user, it ends with the reason and status 125 rather than
leaving the host to wait out its own timeout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.unit.test_l1_job import busybox

RUN = Path(__file__).resolve().parents[2] / "images/l1/rootfs/kvmlab/run"


def test_a_share_that_never_comes_ends_the_command_with_the_reason(tmp_path):
    env = {"PATH": os.environ["PATH"], "KVMLAB_L1_SHARED": str(tmp_path / "never"), "KVMLAB_L1_SHARE_WAIT": "2"}
    done = subprocess.run([*busybox(), "sh", str(RUN), "tok1", "0", "dHJ1ZQo="], capture_output=True, env=env,
                          timeout=60)
    out = done.stdout.decode()
    assert done.returncode == 125, done.stderr
    assert out.startswith("\x1eB tok1\nkvmlab-l1: L1's share was not mounted 2 s after L1 was ready;"), out
    assert out.endswith("\x1eE tok1 125\n"), out


def test_a_mounted_share_is_not_waited_for(tmp_path):
    (tmp_path / "shared").touch()
    env = {"PATH": os.environ["PATH"], "KVMLAB_L1_SHARED": str(tmp_path / "shared"), "KVMLAB_L1_SHARE_WAIT": "2"}
    # `true`, base64: it runs at once (its status file cannot be written here: no share)
    done = subprocess.run([*busybox(), "sh", str(RUN), "tok2", "0", "dHJ1ZQo="], capture_output=True, env=env,
                          timeout=60)
    out = done.stdout.decode()
    assert out.startswith("\x1eB tok2\n") and out.endswith("\x1eE tok2 0\n"), (out, done.stderr)
