"""lab/machine/prestart.py on real processes (a `sleep` stands in for QEMU): which records
are trusted, what a head start leaves, and that a discarded one is reaped."""

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from lab.core.paths import private_dir
from lab.machine.prestart import Prestart, launch_key, record_path
from lab.machine.qemu import pid_alive
from lab.machine.state import labs_root

ARGV = ["-q", "up", "--name", "pre"]


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMLAB_RUNTIME_DIR", str(tmp_path / "rt"))
    private_dir(labs_root())
    return tmp_path


@pytest.fixture
def remembered(runtime):
    """The record an `up --name pre` leaves: its 'QEMU' a sleep, two initrd parts, late modules."""
    parts = [runtime / "initramfs.cpio", runtime / "modules.cpio"]
    parts[0].write_bytes(b"A" * 3000)
    parts[1].write_bytes(b"B" * 5)
    late = runtime / "late"
    late.mkdir()
    (late / "order").write_text("07-evdev.ko\n")
    command = ["/usr/bin/sleep", "60"]
    Prestart(launch_key(ARGV)).remember("pre", command, [str(p) for p in parts], str(late),
                                        {"name": "pre", "command": command, "pid": 1, "ready": {"uptime": 1}})
    return command, [str(p) for p in parts], str(late)


def started(prestart):
    """Starts it; the test ends with its process reaped whatever happens."""
    try:
        assert prestart.start()
    except BaseException:
        prestart.discard()
        raise
    return prestart


def test_only_an_up_has_a_key():
    assert launch_key(["status"]) is None
    assert launch_key(["-q", "test", "thp"]) is None
    assert launch_key(["up", "--help"]) is None
    assert launch_key(["up", "--snapshot"])["argv"] == ["up", "--snapshot"]
    key = launch_key(ARGV)
    assert key is not None and key["argv"] == ARGV and key["cwd"] == os.getcwd()


def test_the_key_holds_kvmlabs_environment_and_not_the_rest(monkeypatch):
    monkeypatch.setenv("KVMLAB_CACHE_DIR", "/somewhere")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    key = launch_key(ARGV)
    assert key["env"]["KVMLAB_CACHE_DIR"] == "/somewhere" and "UNRELATED_VARIABLE" not in key["env"]


def test_a_remembered_up_starts_its_command_with_the_lab_prepared(remembered, runtime):
    command, parts, late = remembered
    prestart = started(Prestart(launch_key(ARGV)))
    try:
        pid = prestart.l0.pid
        assert pid_alive(pid) and open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:2] == [b"/usr/bin/sleep",
                                                                                                   b"60"]
        lab_dir = labs_root() / "pre"
        assert (lab_dir / "initrd.cpio").read_bytes() == b"A" * 3000 + b"B" * 5
        assert (lab_dir / "share/.kvmlab/modules/order").read_text() == "07-evdev.ko\n"
        state = json.loads((lab_dir / "lab.json").read_text())
        # its pid on record, never ready: a kvmlab killed now leaves a QEMU the next command stops
        assert state["pid"] == pid and state["prestarted"] is True and "ready" not in state
        assert (lab_dir.stat().st_mode & 0o777) == 0o700
        assert prestart.fits(command, parts, late)
        assert not prestart.fits([*command, "-smp", "1"], parts, late)
        assert not prestart.fits(command, parts[:1], late)
        assert not prestart.fits(command, parts, None)
    finally:
        prestart.discard()
        prestart.release()
    assert not pid_alive(pid) and not (labs_root() / "pre").exists()


def test_a_taken_over_qemu_is_not_discarded(remembered):
    prestart = started(Prestart(launch_key(ARGV)))
    l0 = prestart.adopt()
    prestart.discard()
    try:
        assert pid_alive(l0.pid) and (labs_root() / "pre/lab.json").exists()
    finally:
        l0.kill()
        prestart.release()


def last_run_left(lab_dir):
    """What a lab that went down leaves: its directory with the run's logs."""
    lab_dir.mkdir(mode=0o700)
    (lab_dir / "console.log").write_text("the last run's L1 console\n")


def test_a_discarded_guess_gives_the_last_runs_logs_back(remembered):
    lab_dir = labs_root() / "pre"
    last_run_left(lab_dir)
    prestart = started(Prestart(launch_key(ARGV)))
    try:
        assert (lab_dir / "lab.json").exists() and not (lab_dir / "console.log").exists()
    finally:
        prestart.discard()  # bad input, Ctrl-C, or another command
        prestart.release()
    assert sorted(p.name for p in lab_dir.iterdir()) == ["console.log"]
    assert (lab_dir / "console.log").read_text() == "the last run's L1 console\n"
    assert not any(p.name.endswith(".before-up") for p in labs_root().iterdir())


def test_a_guess_that_fails_before_qemu_starts_gives_the_logs_back_too(remembered, monkeypatch):
    lab_dir = labs_root() / "pre"
    last_run_left(lab_dir)

    def no_qemu(self):
        raise OSError("cannot start")

    monkeypatch.setattr("lab.machine.prestart.L0Process.start", no_qemu)
    prestart = Prestart(launch_key(ARGV))
    with pytest.raises(OSError):
        prestart.start()
    assert sorted(p.name for p in lab_dir.iterdir()) == ["console.log"]
    assert not prestart.holds_lock


def test_a_taken_over_guess_empties_the_directory_as_a_boot_does(remembered):
    lab_dir = labs_root() / "pre"
    last_run_left(lab_dir)
    prestart = started(Prestart(launch_key(ARGV)))
    l0 = prestart.adopt()
    try:
        prestart.discard()
        assert not (lab_dir / "console.log").exists() and (lab_dir / "lab.json").exists()
        assert not any(p.name.endswith(".before-up") for p in labs_root().iterdir())
    finally:
        l0.kill()
        prestart.release()


@pytest.mark.parametrize("spoil", ["group-readable", "another-users", "symlink", "other-key", "garbage", "a-path"])
def test_a_record_not_private_or_not_this_ups_is_ignored(spoil, remembered, runtime):
    path = record_path(launch_key(ARGV))
    if spoil == "group-readable":
        path.chmod(0o640)
    elif spoil == "another-users":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(path, 65534, 65534)
    elif spoil == "symlink":
        target = runtime / "elsewhere.json"
        path.rename(target)
        path.symlink_to(target)
    elif spoil == "other-key":
        record = json.loads(path.read_text())
        record["key"]["argv"] = ["up", "--name", "other"]
        path.write_text(json.dumps(record))
    elif spoil == "a-path":
        record = json.loads(path.read_text())
        record["name"] = "../pre"
        path.write_text(json.dumps(record))
    else:
        path.write_text("{not json")
    prestart = Prestart(launch_key(ARGV))
    assert not prestart.start()
    assert prestart.l0 is None and not (labs_root() / "pre").exists()


def test_a_restore_is_guessed_only_while_its_saved_state_is_unchanged(runtime):
    vmstate = runtime / "vmstate"
    vmstate.write_bytes(b"S" * 100)
    part = runtime / "initramfs.cpio"
    part.write_bytes(b"A")
    # A stand-in that keeps running with QEMU's restore arguments (`sleep` itself would
    # refuse "-incoming" and exit at once, and an exited QEMU never fits).
    qemu = runtime / "qemu"
    qemu.write_text("#!/bin/sh\nexec /usr/bin/sleep 60\n")
    qemu.chmod(0o755)
    command = [str(qemu), "-incoming", f"file:{vmstate}"]
    argv = ["up", "--name", "pre", "--snapshot"]
    Prestart(launch_key(argv)).remember("pre", command, [str(part)], None, {"name": "pre"}, str(vmstate))
    prestart = started(Prestart(launch_key(argv)))
    try:
        time.sleep(0.1)  # a stand-in that exits at once (as `sleep -incoming` did) fails here
        assert prestart.fits(command, [str(part)], None, str(vmstate))
        assert not prestart.fits(command, [str(part)], None, None)  # a boot is not this restore
    finally:
        prestart.discard()
        prestart.release()
    time.sleep(0.01)
    vmstate.write_bytes(b"T" * 100)  # saved anew, same path and size
    assert not Prestart(launch_key(argv)).start()


def test_a_changed_input_file_is_not_guessed(remembered):
    _, parts, _ = remembered
    time.sleep(0.01)
    with open(parts[1], "ab") as f:
        f.write(b"C")
    prestart = Prestart(launch_key(ARGV))
    assert not prestart.start() and not (labs_root() / "pre").exists()


def test_a_lab_with_state_or_a_held_lock_is_left_to_up(remembered):
    lab_dir = labs_root() / "pre"
    private_dir(lab_dir)
    (lab_dir / "lab.json").write_text('{"name": "pre", "pid": 1}')
    prestart = Prestart(launch_key(ARGV))
    assert not prestart.start() and not prestart.holds_lock
    assert (lab_dir / "lab.json").exists()  # untouched: `up` reaps or refuses, as before
    (lab_dir / "lab.json").unlink()
    with open(labs_root() / ".pre.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not Prestart(launch_key(ARGV)).start()


def test_an_interrupt_wrapped_by_python_counts_as_an_interrupt():
    from lab.cli import caused_by_interrupt

    class Named:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    with pytest.raises(RuntimeError) as wrapped:
        type("Taken", (), {"field": Named()})
    assert caused_by_interrupt(wrapped.value)
    assert not caused_by_interrupt(RuntimeError("Symlink loop from 'x'"))


IGNORED_STOP = """
import signal, sys, time, weakref
from lab.cli import stop_again, terminate
if sys.argv[1] == "kept":
    sys.unraisablehook = stop_again
signal.signal(signal.SIGTERM, terminate)
class Thing:
    pass
thing = Thing()
# The handler runs inside the callback, where Python ignores the KeyboardInterrupt it raises
# (as in the import system's module-lock callbacks, during `up`'s imports).
ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGTERM))
del thing
try:
    time.sleep(3)
    print("went on")
except KeyboardInterrupt:
    print("stopped")
"""


@pytest.mark.parametrize("hook, outcome", [("kept", "stopped"), ("python's", "went on")])
def test_a_stop_that_python_ignored_is_sent_again(hook, outcome):
    done = subprocess.run([sys.executable, "-c", IGNORED_STOP, hook], capture_output=True, text=True, timeout=30)
    assert done.stdout == f"{outcome}\n", done.stderr


def test_only_the_most_recent_records_are_kept(runtime):
    from lab.machine import prestart as module

    for i in range(module.KEEP + 5):
        Prestart(launch_key(["up", "--name", f"n{i}"])).remember(f"n{i}", ["/usr/bin/true"], [], None, {})
        time.sleep(0.002)
    kept = sorted(labs_root().glob(".up-*.json"))
    assert len(kept) == module.KEEP
    assert record_path(launch_key(["up", "--name", f"n{module.KEEP + 4}"])) in kept
    assert record_path(launch_key(["up", "--name", "n0"])) not in kept
