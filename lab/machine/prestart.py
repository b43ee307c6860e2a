"""`kvmlab up` starts L1's QEMU before it has read its config: the command that the last
`up` with the same arguments ran, started first and checked once the config is read.

Python's start and kvmlab's imports (click, PyYAML, the image builder) take 60-75 ms
before `up` can build QEMU's command; L1's kernel boots (or its snapshot loads) in that
time instead when the last command starts first. The guess is never trusted. `Lab.up`
builds the command as always and adopts the QEMU started here only when it is the very
same command, with the same initrd parts and late modules (image paths are
content-addressed: the same path is the same bytes) and, for a restore, the same saved
state, unchanged since; otherwise that QEMU is killed and reaped, the lab's
directory given back as it was found (the last run's logs: kept aside while the guess
runs), and the boot starts as it did before. The CLI discards it too when it ends
without `up` having taken it (bad input, Ctrl-C): nothing is left running, and nothing
of the last run is lost.

Only `kvmlab up` from the command line does this; Python's `Lab.up` boots as before. The
record is written after an `up` that booted L1 or restored it (not one that saved a
snapshot: the next such `up` restores it), next to the lab's lock in
the private runtime directory (mode 0600), and is read only when it is the user's own and
private: it holds a command line that this module runs. While the guess runs, the lab's
lock is held and its state file names QEMU's pid, so a kvmlab killed at that moment
leaves a QEMU that the next command finds and stops (state.py), as a killed `up` always
did. Imports stay light here (no YAML, no click): this runs before them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import zlib
from pathlib import Path
from typing import IO, Any

from lab.core.paths import private_dir
from lab.machine.qemu import L0Process, LabPaths, private_opener
from lab.machine.state import LabState, labs_root
from lab.shared.files import write_atomic

#: Options that may come before `up` (the group's own).
GROUP_FLAGS = ("-q", "--quiet")
#: With these `up` starts nothing ahead (help).
NEVER = ("-h", "--help")
VERSION = 1
#: Records kept (one per way of calling `up`: arguments, directory, environment).
KEEP = 16


def launch_key(argv: list[str]) -> dict[str, Any] | None:
    """What makes two `kvmlab up` runs the same run: the arguments, the directory (relative
    config paths), kvmlab's own environment and the user; None when `argv` is not an `up`
    that may be guessed."""
    args = list(argv)
    while args and args[0] in GROUP_FLAGS:
        args.pop(0)
    if not args or args[0] != "up" or any(a in NEVER for a in args):
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith("KVMLAB_") or k in ("HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "TMPDIR")}
    return {"version": VERSION, "argv": list(argv), "cwd": cwd, "env": env, "uid": os.geteuid()}


def record_path(key: dict[str, Any]) -> Path:
    digest = zlib.crc32(json.dumps(key, sort_keys=True).encode())
    return labs_root() / f".up-{digest:08x}.json"


def file_mark(path: str | None) -> list[Any] | None:
    """A file's identity for the record: its path, size and modification time."""
    if path is None:
        return None
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def path_of(mark: list[Any] | None) -> str | None:
    """The path a file_mark names (None for none)."""
    return mark[0] if mark else None


def prepare_dir(files: LabState, initrd_parts: list[str], late_modules: str | None) -> None:
    """The lab's directory as a boot wants it: emptied (logs too), private, the share and
    its .kvmlab, the initrd (the initramfs followed by the kernel's modules), the modules
    L1 loads once it is ready. Shared by a boot and the guess (the same steps)."""
    paths = files.paths
    if os.path.lexists(paths.dir):
        private_dir(paths.dir)  # ours, a real directory: only then is it emptied
    files.clean(keep_logs=False)
    private_dir(paths.dir)
    paths.share.mkdir(mode=0o700)
    paths.ready.parent.mkdir()
    with open(paths.initrd, "wb", opener=private_opener) as initrd:
        for part in initrd_parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, initrd, 1 << 20)
    if late_modules is not None:
        shutil.copytree(late_modules, paths.ready.parent / "modules")


class Prestart:
    """One `kvmlab up`'s key, and the QEMU started from its record, if any."""

    def __init__(self, key: dict[str, Any] | None):
        self.key = key
        self.l0: L0Process | None = None
        self.files: LabState | None = None
        self.started = 0.0
        self.record: dict[str, Any] = {}
        self._lock: IO | None = None
        #: the lab's directory as the head start found it (the last run's logs), kept aside
        #: until `up` takes the QEMU over; put back if it does not (bad input, Ctrl-C), as
        #: an `up` without a head start would have left it
        self._kept: Path | None = None

    # -- the guess ---------------------------------------------------------------------
    def start(self) -> bool:
        """Starts the remembered command if its record is ours and its files unchanged,
        and the lab is free and down; True if QEMU runs."""
        record = self._read()
        if record is None:
            return False
        try:
            marks = [*record["initrd"], record["late"], record["vmstate"], record["qemu"]]
            if [file_mark(path_of(mark)) for mark in marks] != marks or path_of(record["qemu"]) != record["command"][0]:
                return False
        except (OSError, KeyError, TypeError, IndexError):
            return False
        name = record.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return False
        paths = LabPaths(labs_root() / name)
        files = LabState(name, paths)
        lock = files.try_lock()
        if lock is None:
            return False  # another kvmlab has the lab: `up` says so, as before
        self._lock, self.files, self.record = lock, files, record
        try:
            if files.read() is not None:
                self.release()  # up, starting, or stale: `up` deals with it, as before
                return False
            kept = paths.dir.parent / f".{name}.before-up"
            shutil.rmtree(kept, ignore_errors=True)
            if os.path.lexists(paths.dir):
                private_dir(paths.dir)  # ours, a real directory: only then is it moved
                os.rename(paths.dir, kept)
                self._kept = kept
            prepare_dir(files, [p[0] for p in record["initrd"]], path_of(record["late"]))
            self.started = time.monotonic()
            self.l0 = L0Process(record["command"], paths.qemu_log)
            pid = self.l0.start()
            # Its pid on record at once: a kvmlab killed from here on leaves a QEMU that the
            # next command stops (state.py: never ready, and nobody holds the lock).
            files.write({**record["state"], "pid": pid, "started_at": time.time(), "prestarted": True})
        except BaseException:
            self.discard()
            self.release()  # `up` goes its usual way, its own checks first
            raise
        return True

    def _read(self) -> dict[str, Any] | None:
        if self.key is None:
            return None
        path = record_path(self.key)
        try:
            root = os.lstat(path.parent)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            uid = os.getuid()
            # It holds a command that is run: only a private file in a private directory, ours.
            if not stat.S_ISDIR(root.st_mode) or root.st_uid != uid or root.st_mode & 0o077 or \
                    not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077 or st.st_size > 1 << 20:
                return None
            record = json.loads(os.read(fd, st.st_size + 1))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        if not isinstance(record, dict) or record.get("key") != self.key:
            return None
        return record

    def fits(self, command: list[str], initrd_parts: list[str], late_modules: str | None,
             vmstate: str | None = None) -> bool:
        """The QEMU started here is the one `up` would start now: the same command, initrd
        parts and late modules, and when it restores, the same saved state (unchanged)."""
        if self.l0 is None or self.l0.exit_code() is not None or self.record["command"] != command:
            return False
        if [p[0] for p in self.record["initrd"]] != initrd_parts or path_of(self.record["late"]) != late_modules:
            return False
        try:
            return self.record["vmstate"] == file_mark(vmstate)
        except OSError:
            return False

    def adopt(self) -> L0Process:
        """`up` takes the QEMU over (it reaps it from now on)."""
        assert self.l0 is not None
        l0, self.l0 = self.l0, None
        if self._kept is not None:  # a boot empties the directory, logs too (prepare_dir)
            shutil.rmtree(self._kept, ignore_errors=True)
            self._kept = None
        return l0

    def discard(self) -> None:
        """Kills and reaps the QEMU started here, and gives the lab's directory back as it
        was found; the lock is kept (`up` goes on under it, or `release` lets it go)."""
        made = self.l0 is not None or self._kept is not None  # the directory is the guess's
        if self.l0 is not None:
            self.l0.kill()
            self.l0 = None
        if made and self.files is not None:
            self.files.clean(keep_logs=False)
        if self._kept is not None and self.files is not None:
            try:
                os.rename(self._kept, self.files.paths.dir)
            except OSError:
                pass  # only its logs are lost, as a boot would have lost them
            self._kept = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def holds_lock(self) -> bool:
        return self._lock is not None

    # -- the record ----------------------------------------------------------------------
    def remember(self, name: str, command: list[str], initrd_parts: list[str], late_modules: str | None,
                 state: dict[str, Any], vmstate: str | None = None) -> None:
        """After an `up` that booted L1, or restored it from `vmstate`: what the next `up`
        with the same key starts first."""
        if self.key is None:
            return
        try:
            record = {"key": self.key, "name": name, "command": command,
                      "initrd": [file_mark(p) for p in initrd_parts], "late": file_mark(late_modules),
                      "vmstate": file_mark(vmstate),
                      "qemu": file_mark(command[0]),
                      "state": {k: v for k, v in state.items()
                                if k not in ("pid", "started_at", "ready", "prestarted")}}
            path = record_path(self.key)
            write_atomic(path, json.dumps(record) + "\n", mode=0o600)
            # One record per way of calling `up`: the most recent KEEP are kept.
            records = sorted(path.parent.glob(".up-*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
            for old in records[KEEP:]:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # only the next up's head start is lost
