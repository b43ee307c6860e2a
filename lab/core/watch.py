"""Sleeping until something happens instead of looking every few milliseconds.

`kvmlab up` waits about two seconds for L1's ready file. Looking for it every 5 ms woke the
host 200 times a second while QEMU's threads wanted both of its cores: in sixteen
interleaved boots, L1 became ready a median 0.02 s sooner (guest time) when the host looked
every 50 ms instead. Waking only when a file in the directory is written, or when QEMU
ends, costs the boot nothing and sees the file at once.

inotify (through the C library) and pidfd_open are Linux's; where either is missing, the
wait falls back to sleeping, at most `fallback` seconds at a time.
"""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any

#: inotify's event bits (linux/inotify.h): a file written and closed, moved in, created.
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


def _libc() -> Any:
    """The C library with inotify's calls declared, or None. The symbols Python itself
    was linked with (dlopen of NULL): ctypes.util.find_library("c") would run
    `ldconfig -p` in a new process while QEMU boots L1 on the host's cores."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


#: The inotify descriptor of the last Waker closed, its watch removed. Closing one waits
#: for the kernel's RCU grace period when its watch goes (1.6-19 ms measured here with
#: the host's cores busy, as QEMU keeps them while L1 boots; 0.01 ms once the watch had
#: been removed 30 ms before), and `up` closes its Waker the moment L1 is ready: the
#: descriptor is closed by the next Waker, or by the process's exit, which does not wait.
_parked: list[int] = []


def _close_parked() -> None:
    while _parked:
        os.close(_parked.pop())


class Waker:
    """Wakes `wait()` when a file in `directory` is created, written or moved in, or when
    process `pid` ends; otherwise after the timeout. Close it (or use `with`)."""

    def __init__(self, directory: Path | None = None, pid: int | None = None, fallback: float = 0.005):
        self.fallback = fallback
        self._fds: list[int] = []
        self._inotify = -1
        self._libc: Any = None
        self._watch = -1
        _close_parked()
        if directory is not None:
            libc = _libc()
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC) if libc is not None else -1
            if fd >= 0:
                mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
                watch = libc.inotify_add_watch(fd, os.fsencode(directory), mask)
                if watch >= 0:
                    self._inotify, self._libc, self._watch = fd, libc, watch
                    self._fds.append(fd)
                else:
                    os.close(fd)
        self.watching_pid = False
        if pid is not None and hasattr(os, "pidfd_open"):
            try:
                self._fds.append(os.pidfd_open(pid))
                self.watching_pid = True
            except OSError:  # gone already, or a kernel older than 5.3
                pass
        self._poller = select.poll()
        for fd in self._fds:
            self._poller.register(fd, select.POLLIN)

    @property
    def watching_directory(self) -> bool:
        return self._inotify >= 0

    def wait(self, timeout: float) -> bool:
        """Sleeps until an event or `timeout` seconds (the fallback's at most, without
        inotify); True if something happened. Events are read and dropped: the caller
        looks. Once the process has ended, every wait returns at once."""
        if not self.watching_directory:
            timeout = min(timeout, self.fallback)
        ready = [fd for fd, _ in self._poller.poll(max(timeout, 0) * 1000)]
        if self._inotify in ready:
            try:
                while os.read(self._inotify, 65536):
                    pass
            except BlockingIOError:
                pass
        return bool(ready)

    def close(self) -> None:
        for fd in self._fds:
            self._poller.unregister(fd)
            if fd == self._inotify:
                self._libc.inotify_rm_watch(fd, self._watch)  # its grace period starts now
                _close_parked()
                _parked.append(fd)
            else:
                os.close(fd)
        self._fds = []
        self._inotify = -1

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
