"""`kvmlab up`'s head start for real (lab/machine/prestart.py): the second `up` with the
same arguments starts QEMU from the first one's command before it reads its config, and
takes it over only when the config asks for that very QEMU; every other way out reaps it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot


def state_of(lab_dir):
    return json.loads((lab_dir / "lab.json").read_text())


def booted_once(name, *args):
    """`kvmlab up ARGS` booted, then down: the next `up` with these arguments is guessed."""
    result = kvmlab("up", *args)
    assert result.returncode == 0, result.stderr
    assert kvmlab("down", "--name", name).returncode == 0


def configured(tmp_path, name, text=""):
    config = tmp_path / "lab.yaml"
    config.write_text(f"lab:\n  name: {name}\n{text}")
    return config


def wait_for_qemu(proc, lab_dir):
    deadline = time.monotonic() + 60
    while not qemu_pids_in(lab_dir):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.005)
    return qemu_pids_in(lab_dir)


def test_a_second_up_takes_over_the_qemu_started_from_the_first_ones_command(private_runtime):
    lab_dir = private_runtime / "labs/guess"
    assert kvmlab("up", "--name", "guess").returncode == 0
    first = state_of(lab_dir)
    assert "prestarted" not in first
    assert kvmlab("down", "--name", "guess").returncode == 0
    result = kvmlab("up", "--name", "guess")
    assert result.returncode == 0, result.stderr
    try:
        second = state_of(lab_dir)
        assert second["prestarted"] is True and second["command"] == first["command"]
        assert qemu_pids_in(lab_dir) == [second["pid"]]
        assert kvmlab("exec", "--name", "guess", "--", "nproc").stdout == b"2\n"
    finally:
        assert kvmlab("down", "--name", "guess").returncode == 0
    assert qemu_pids_in(lab_dir) == []


def test_a_changed_config_stops_the_guess_and_boots_what_it_asks(tmp_path, private_runtime):
    lab_dir = private_runtime / "labs/changed"
    config = configured(tmp_path, "changed", "  cpus: 2\n")
    booted_once("changed", "--config", str(config))
    configured(tmp_path, "changed", "  cpus: 1\n")
    result = kvmlab("up", "--config", str(config))
    assert result.returncode == 0, result.stderr
    try:
        state = state_of(lab_dir)
        assert "prestarted" not in state
        assert qemu_pids_in(lab_dir) == [state["pid"]]  # the guessed QEMU (2 vCPUs) is gone
        assert kvmlab("exec", "--name", "changed", "--", "nproc").stdout == b"1\n"
    finally:
        assert kvmlab("down", "--name", "changed").returncode == 0


def test_bad_input_after_a_guess_leaves_nothing_running_and_the_last_runs_log(tmp_path, private_runtime):
    lab_dir = private_runtime / "labs/badguess"
    config = configured(tmp_path, "badguess")
    booted_once("badguess", "--config", str(config))
    last_console = (lab_dir / "console.log").read_bytes()
    assert b"kvmlab: L1 ready" in last_console
    configured(tmp_path, "badguess", "  cpus: lots\n")
    result = kvmlab("up", "--config", str(config))
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "lab.cpus" in err, err
    assert qemu_pids_in(lab_dir) == [] and not (lab_dir / "lab.json").exists()
    # as without a head start, bad input loses nothing: the last run's log is still there
    assert (lab_dir / "console.log").read_bytes() == last_console


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_a_guessed_up_reaps_qemu(sig, private_runtime):
    name = f"guess-{sig.name.lower()}"
    lab_dir = private_runtime / "labs" / name
    booted_once(name, "--name", name)
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "up", "--name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_qemu(proc, lab_dir)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in err, err
    assert qemu_pids_in(lab_dir) == [] and not (lab_dir / "lab.json").exists()


def test_a_kvmlab_killed_during_a_guess_leaves_a_qemu_the_next_up_stops(private_runtime):
    lab_dir = private_runtime / "labs/guess-killed"
    booted_once("guess-killed", "--name", "guess-killed")
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "up", "--name", "guess-killed"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    [orphan] = wait_for_qemu(proc, lab_dir)
    proc.kill()
    proc.communicate(timeout=60)
    assert qemu_pids_in(lab_dir) == [orphan] and state_of(lab_dir)["pid"] == orphan
    result = kvmlab("up", "--name", "guess-killed")
    assert result.returncode == 0, result.stderr
    try:
        state = state_of(lab_dir)
        assert qemu_pids_in(lab_dir) == [state["pid"]] and state["pid"] != orphan
    finally:
        assert kvmlab("down", "--name", "guess-killed").returncode == 0


def test_a_restore_is_guessed_too(private_runtime):
    lab_dir = private_runtime / "labs/guess-restore"
    booted_once("guess-restore", "--name", "guess-restore", "--snapshot")  # saved, or restored
    booted_once("guess-restore", "--name", "guess-restore", "--snapshot")  # restored: remembered
    result = kvmlab("up", "--name", "guess-restore", "--snapshot")
    assert result.returncode == 0, result.stderr
    try:
        state = state_of(lab_dir)
        assert state["prestarted"] is True and state["snapshot"]["how"] == "restored"
        assert qemu_pids_in(lab_dir) == [state["pid"]]
        assert kvmlab("exec", "--name", "guess-restore", "--", "cat", "/proc/sys/kernel/hostname").stdout == b"kvmlab\n"
    finally:
        assert kvmlab("down", "--name", "guess-restore").returncode == 0
