"""A lab's state file and its lock: whether its QEMU runs and L1 is ready, and the
clean-up of what a lab whose kvmlab was killed left behind."""

from __future__ import annotations

import fcntl
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from lab.core.errors import LabBusy, LabError
from lab.core.paths import private_dir, runtime_dir
from lab.machine import qemu
from lab.machine.logs import why_stopped
from lab.machine.qemu import LabPaths
from lab.shared.files import write_atomic


def labs_root() -> Path:
    return runtime_dir() / "labs"


def list_labs() -> list[str]:
    labs = labs_root()
    if not labs.is_dir():
        return []
    return sorted(p.name for p in labs.iterdir() if p.is_dir() and (p / "lab.json").exists())


class LabState:
    def __init__(self, name: str, paths: LabPaths):
        self.name = name
        self.paths = paths
        self.root = paths.dir.parent

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.paths.state.read_text())
        except (OSError, ValueError):
            return None

    def write(self, state: dict[str, Any]) -> None:
        write_atomic(self.paths.state, json.dumps(state, indent=2) + "\n", mode=0o600)

    def pid(self) -> int | None:
        """The lab's QEMU pid while it runs, or None; a dead pid, or one reused by another
        process (even another lab's QEMU), counts as not running."""
        state = self.read()
        if not state or "pid" not in state:
            return None
        pid = int(state["pid"])
        return pid if qemu.pid_alive(pid) and qemu.pid_is_lab(pid, self.paths) else None

    def is_up(self) -> bool:
        """Up and ready: QEMU runs and L1 said it was ready."""
        state = self.read()
        return self.pid() is not None and bool(state and state.get("ready"))

    def require_up(self) -> dict[str, Any]:
        """The state of a lab that is up; a lab that is not (or still starting) is an error."""
        state = self.read()
        if not state or self.pid() is None or not state.get("ready"):
            # L1 was up, and its QEMU is gone: the console may say why
            why = why_stopped(self.paths.console_log) if state and state.get("ready") else ""
            if state and not self.reap_stale():
                raise LabBusy(f"lab {self.name!r} is still starting (another kvmlab is bringing it up); "
                              "wait for it, or pick another --name")
            raise LabError(f"lab {self.name!r} is not up" + (f" (L1 stopped: {why})" if why else "")
                           + f"; start it with `kvmlab up --name {self.name}`")
        return state

    def reap_stale(self) -> str | None | bool:
        """Cleans what a lab whose kvmlab was killed left behind: state whose QEMU is gone
        (sockets, pid file), or a QEMU a killed `up` never saw ready. Returns what it did
        (None: nothing to do), or False while another kvmlab is starting the lab."""
        try:
            with self.lock():
                return self.reap_stale_locked()
        except LabBusy:
            return False

    def reap_stale_locked(self) -> str | None:
        state = self.read()
        if state is None:
            return None
        pid = self.pid()
        if pid is None:
            self.clean()
            return "stale state of a lab that is gone removed"
        if not state.get("ready"):
            # Nobody holds the lock, yet L1 was never seen ready: the `up` that started
            # this QEMU was killed. It is not a lab anyone can use: stop it.
            qemu.kill_pid(pid)
            self.clean()
            return f"QEMU (pid {pid}) left starting by a kvmlab that was killed: stopped"
        return None

    def clean(self, keep_logs: bool = True) -> None:
        """Removes what a stopped lab leaves: sockets, pid, state, initrd, share."""
        d = self.paths.dir
        if not d.exists():
            return
        for path in [*self.paths.sockets(), self.paths.pidfile, self.paths.state, self.paths.initrd,
                     d / "agent.lock", d / "qmp.lock"]:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.paths.share, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(d, ignore_errors=True)

    def try_lock(self) -> IO | None:
        """The lab's lock, held while the returned file stays open; None if another has it."""
        private_dir(self.root.parent)
        private_dir(self.root)
        lock = open(self.root / f".{self.name}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Only one `up` (or `down`) of a name at a time; the loser is told at once."""
        lock = self.try_lock()
        if lock is None:
            raise LabBusy(f"lab {self.name!r} is being started or stopped by another kvmlab; "
                          "wait for it, or pick another --name")
        with lock:
            yield
