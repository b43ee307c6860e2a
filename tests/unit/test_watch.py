"""lab/core/watch.py: `up` sleeps until L1 writes in the share or QEMU ends."""

import os
import subprocess
import threading
from pathlib import Path

from lab.core.watch import Waker


def test_a_file_written_in_the_directory_wakes_the_wait(tmp_path):
    with Waker(tmp_path) as waker:
        assert waker.watching_directory
        assert waker.wait(0) is False  # nothing yet
        writer = threading.Timer(0.05, lambda: (tmp_path / "ready").write_text("end=1\n"))
        writer.start()
        try:
            # True only for an event: a timeout (a minute here) returns False
            assert waker.wait(60) is True
        finally:
            writer.join()
        assert (tmp_path / "ready").exists()


def test_a_file_elsewhere_does_not_wake_it(tmp_path):
    (tmp_path / "watched").mkdir()
    with Waker(tmp_path / "watched") as waker:
        (tmp_path / "other").write_text("x")
        assert waker.wait(0.05) is False


def test_the_process_ending_wakes_the_wait(tmp_path):
    child = subprocess.Popen(["sleep", "0.1"])
    try:
        with Waker(tmp_path, child.pid) as waker:
            assert waker.watching_pid
            assert waker.wait(60) is True
            assert child.wait(timeout=5) == 0
    finally:
        child.kill()
        child.wait()


def test_events_are_drained_so_the_next_wait_sleeps(tmp_path):
    with Waker(tmp_path) as waker:
        for i in range(100):
            (tmp_path / f"f{i}").write_text("x")
        assert waker.wait(1) is True
        assert waker.wait(0.05) is False


def test_without_a_directory_it_sleeps_in_short_steps(tmp_path):
    with Waker(None, fallback=0.001) as waker:
        assert not waker.watching_directory and not waker.watching_pid
        assert waker.wait(5) is False  # one fallback step, not five seconds
    missing = Waker(tmp_path / "missing")  # inotify refuses a missing directory
    try:
        assert not missing.watching_directory
        assert missing.wait(5) is False
    finally:
        missing.close()


def test_closed_wakers_leave_one_inotify_descriptor_at_most_without_its_watch(tmp_path):
    def inotify_fds():
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "inotify" in os.readlink(f"/proc/self/fd/{fd}"):
                    found.append(fd)
            except FileNotFoundError:  # listdir's own descriptor
                pass
        return found

    before = inotify_fds()
    for _ in range(20):
        with Waker(tmp_path):
            pass
    left = [fd for fd in inotify_fds() if fd not in before]
    assert len(left) <= 1  # the last one, parked: the next Waker or the exit closes it
    for fd in left:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        assert "inotify wd:" not in info  # its watch is gone: nothing wakes through it
    with Waker(tmp_path) as waker:  # and a new Waker works as before
        (tmp_path / "ready").write_text("end=1\n")
        assert waker.wait(60) is True
