"""Starting and stopping labs for real: every path reaps its QEMU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot


def test_down_leaves_no_process_and_no_sockets(private_runtime):
    assert kvmlab("up", "--name", "downer").returncode == 0
    lab_dir = private_runtime / "labs/downer"
    pid = json.loads((lab_dir / "lab.json").read_text())["pid"]
    assert qemu_pids_in(lab_dir) == [pid]
    result = kvmlab("down", "--name", "downer")
    assert result.returncode == 0 and b"powered down" in result.stdout
    assert qemu_pids_in(lab_dir) == []
    assert not any(lab_dir.glob("*.sock")) and not (lab_dir / "qemu.pid").exists()
    assert kvmlab("status", "--name", "downer").returncode == 1
    assert kvmlab("down", "--name", "downer").returncode == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_signal_during_up_reaps_qemu_and_the_next_up_works(sig, private_runtime):
    name = f"intr-{sig.name.lower()}"
    lab_dir = private_runtime / "labs" / name
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "up", "--name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not qemu_pids_in(lab_dir):  # wait until QEMU runs: the boot is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert qemu_pids_in(lab_dir) == []
    assert not (lab_dir / "lab.json").exists()
    assert kvmlab("up", "--name", name).returncode == 0
    assert kvmlab("down", "--name", name).returncode == 0


def test_two_labs_run_at_once(private_runtime):
    assert kvmlab("up", "--name", "one", "--cpus", "1", "--memory", "1G").returncode == 0
    try:
        assert kvmlab("up", "--name", "two", "--thp", "never").returncode == 0
        try:
            assert kvmlab("exec", "--name", "one", "--", "nproc").stdout == b"1\n"
            thp = kvmlab("exec", "--name", "two", "--", "cat", "/sys/kernel/mm/transparent_hugepage/enabled")
            assert thp.stdout == b"always madvise [never]\n"
        finally:
            kvmlab("down", "--name", "two")
    finally:
        kvmlab("down", "--name", "one")
    assert qemu_pids_in(private_runtime / "labs") == []


# Each way `up` can fail: (lab name, config, what stderr must say). Every one exits 1,
# says why in the lab's own words, and leaves no QEMU behind.
UP_FAILURES = {
    "qemu-refuses": ("qemu:\n  extra_args: ['-no-such-option']\n",
                     ["QEMU exited with status 1 before L1 was ready",
                      "-no-such-option"]),  # QEMU's own complaint and the command line
    "never-boots": ("lab:\n  kernel: {image}\n  boot_timeout: 8\n",
                    ["L1 was not ready after 8 s (lab.boot_timeout)", "last lines of the L1 console"]),
    "no-el2": ("qemu:\n  extra_args: ['-machine', 'virtualization=off']\n",
               ["KVM did not initialise in L1 (no /dev/kvm)", "HYP mode not available"]),
}


@pytest.mark.parametrize("name", list(UP_FAILURES))
def test_up_failures_are_reported_and_leave_nothing_running(name, tmp_path, private_runtime):
    # A valid Image header with nothing behind it: the CPU spins in zeros, L1 never speaks.
    image = tmp_path / "Image"
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * (2 << 20))
    text, expected = UP_FAILURES[name]
    config = tmp_path / "lab.yaml"
    config.write_text(f"lab:\n  name: {name}\n" + text.format(image=image).replace("lab:\n", ""))
    start = time.monotonic()
    result = kvmlab("up", "--config", str(config))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    for fragment in expected:
        assert fragment in err
    assert time.monotonic() - start < 60
    assert qemu_pids_in(private_runtime / "labs" / name) == []


def test_stale_state_of_a_killed_lab_is_cleaned(private_runtime):
    assert kvmlab("up", "--name", "stale").returncode == 0
    lab_dir = private_runtime / "labs/stale"
    pid = json.loads((lab_dir / "lab.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while qemu_pids_in(lab_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = kvmlab("status", "--name", "stale")
    assert status.returncode == 1 and b"down" in status.stdout
    assert kvmlab("up", "--name", "stale").returncode == 0
    assert kvmlab("down", "--name", "stale").returncode == 0
