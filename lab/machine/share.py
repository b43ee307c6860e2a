"""What L1 leaves in the share, taken as untrusted: the kernel under test, or a reporter's
reproducer, runs as root in L1 and writes there.

QEMU exports the share with security_model=mapped-file (lab/machine/qemu.py), so what L1
makes is an ordinary 0600 file on the host whatever L1 called it; the type and mode L1
gave it are in .virtfs_metadata/NAME beside it. The host reads the share only through this
module: every path opened component by component with O_NOFOLLOW, regular files only (by
the host's lstat and by L1's metadata), setuid, setgid and hard-linked files refused,
each file and each tree under a size bound, names with control characters refused. What
was refused is listed, never followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.errors import LabError
from lab.shared.files import replacing
from lab.shared.units import GiB, MiB

METADATA = ".virtfs_metadata"
#: Bounds on what one run may bring back: a trace of millions of faults is some 100 MiB.
FILE_LIMIT = 1 * GiB
#: `kvmlab cp` from L1: a file the user asked for (a vmcore, a kernel tree's tarball)
CP_LIMIT = 16 * GiB
TREE_LIMIT = 4 * GiB
ENTRIES_LIMIT = 20_000
DEPTH_LIMIT = 16
SMALL = 16 * MiB
_CHUNK = 1 * MiB
_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


#: L1 writes into the share directly (QEMU's 9p has no quota): while a command runs, the
#: share's file system may not fall below this much free space (or half of what it had when
#: the command began, on a fuller disk), else the lab is stopped. KVMLAB_SHARE_FREE_FLOOR
#: (bytes) overrides it.
FREE_FLOOR = 1 * GiB


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskWatch:
    """Whether L1 has been filling the host's disk through the share since this began."""

    def __init__(self, share: Path):
        self.share = share
        try:
            self.start = free_bytes(share)
        except OSError:
            self.start = -1
        floor = int(os.environ.get("KVMLAB_SHARE_FREE_FLOOR") or FREE_FLOOR)
        self.floor = min(floor, self.start // 2)

    def problem(self) -> str:
        """'' while the disk holds; else what L1 did."""
        if self.start < 0:
            return ""
        try:
            free = free_bytes(self.share)
        except OSError:
            return ""
        if free >= self.floor:
            return ""
        return (f"L1 filled the host's disk through the share: {free >> 20} MiB free on it, under the floor "
                f"of {self.floor >> 20} MiB ({(self.start - free) >> 20} MiB written during this command); "
                "the lab was stopped to keep the host's disk")


class Refused(LabError):
    """A share file the host will not read (a link, a device, too big, ...)."""


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _bad_name(name: str) -> bool:
    return name in ("", ".", "..") or "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name)


def l1_mode(dir_fd: int, name: str) -> int | None:
    """The mode L1 gave `name` (file type and permission bits), from its mapped-file
    metadata; None where there is none (a file the host made)."""
    try:
        fd = os.open(f"{METADATA}/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        if line.startswith("virtfs.mode="):
            try:
                return int(line.split("=", 1)[1])
            except ValueError:
                return None
    return None


def _why_not(dir_fd: int, name: str, st: os.stat_result) -> str:
    """Why a share entry that is not a directory is not taken ('' if it is taken)."""
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)} on the host"
    mode = l1_mode(dir_fd, name)
    if mode is not None and not stat.S_ISREG(mode):
        return f"{_kind(mode)} as L1 made it"
    if mode is not None and mode & (stat.S_ISUID | stat.S_ISGID):
        return f"setuid or setgid in L1 (mode {stat.S_IMODE(mode):o})"
    if st.st_nlink > 1:
        return f"a hard link ({st.st_nlink} names)"
    return ""


def _open_dir(root: Path, parts: list[str]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(f"{root}/{'/'.join(parts)}: not a directory the host made (L1 replaced it?)") from None
        raise
    return fd


def _open_file(dir_fd: int, name: str, where: str, limit: int) -> tuple[int, int]:
    """(fd, size) of a regular file, opened without following a link; Refused otherwise."""
    if _bad_name(name):
        raise Refused(f"{where}: a name the host does not take")
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    why = _why_not(dir_fd, name, st)
    if why:
        raise Refused(f"{where}: {why}, not read")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise Refused(f"{where}: changed while it was opened, not read")
    if now.st_size > limit:
        os.close(fd)
        raise Refused(f"{where}: {now.st_size} bytes, over the bound of {limit}, not read")
    return fd, now.st_size


def read_bytes(root: Path, relative: str, limit: int = SMALL) -> bytes:
    """A file L1 wrote under the share `root`, read as the module's docstring says."""
    *parts, name = relative.split("/")
    dir_fd = _open_dir(root, parts)
    try:
        fd, _ = _open_file(dir_fd, name, f"{root}/{relative}", limit)
    finally:
        os.close(dir_fd)
    try:
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise Refused(f"{root}/{relative}: grew past the bound of {limit} bytes while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(root: Path, relative: str, limit: int = SMALL) -> str:
    return read_bytes(root, relative, limit).decode(errors="replace")


@dataclass
class Taken:
    """What import_tree copied, and what it left (each with the reason)."""

    files: int = 0
    bytes: int = 0
    refused: list[str] = field(default_factory=list)


def import_tree(root: Path, relative: str, dst: Path, file_limit: int = FILE_LIMIT,
                tree_limit: int = TREE_LIMIT) -> Taken:
    """Copies the regular files of the tree `relative` under the share `root` into `dst`
    (made here, files 0644), then removes the tree from the share. Nothing is followed; what
    is not taken is listed in Taken.refused as "path: reason"."""
    taken = Taken()
    dst.mkdir(parents=True, exist_ok=True)
    try:
        top = _open_dir(root, relative.split("/"))
    except FileNotFoundError:
        return taken
    except Refused as exc:
        taken.refused.append(str(exc))
        return taken
    try:
        _copy_dir(top, "", dst, taken, file_limit, tree_limit, 0, [0])
    finally:
        os.close(top)
    _remove(root, relative)
    return taken


def _copy_dir(dir_fd: int, prefix: str, dst: Path, taken: Taken, file_limit: int, tree_limit: int, depth: int,
              entries: list[int]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        where = f"{prefix}{name}"
        if name == METADATA:
            continue
        entries[0] += 1
        if entries[0] > ENTRIES_LIMIT:
            taken.refused.append(f"{prefix or '.'}: more than {ENTRIES_LIMIT} entries, the rest not taken")
            return
        if _bad_name(name):
            taken.refused.append(f"{where!r}: a name with control characters, not taken")
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            taken.refused.append(f"{where}: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            mode = l1_mode(dir_fd, name)
            if mode is not None and not stat.S_ISDIR(mode):
                taken.refused.append(f"{where}: {_kind(mode)} as L1 made it, not taken")
            elif depth >= DEPTH_LIMIT:
                taken.refused.append(f"{where}: deeper than {DEPTH_LIMIT} directories, not taken")
            else:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    (dst / name).mkdir(exist_ok=True)
                    _copy_dir(sub, f"{where}/", dst / name, taken, file_limit, tree_limit, depth + 1, entries)
                finally:
                    os.close(sub)
            continue
        try:
            fd, size = _open_file(dir_fd, name, where, min(file_limit, tree_limit - taken.bytes))
        except Refused as exc:
            taken.refused.append(str(exc).replace(", not read", ", not taken"))
            continue
        except OSError as exc:
            taken.refused.append(f"{where}: {exc.strerror}")
            continue
        try:
            taken.bytes += _copy(fd, dst / name, min(file_limit, tree_limit - taken.bytes))
            taken.files += 1
        except Refused:
            taken.refused.append(f"{where}: grew past its bound while copied, not taken")
        finally:
            os.close(fd)


def _copy(fd: int, path: Path, limit: int) -> int:
    """fd's content into a new file `path` (0644), at most `limit` bytes (Refused past it)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    total = 0
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return total
            total += len(chunk)
            if total > limit:
                raise Refused(str(path))
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    except BaseException:
        os.close(out)
        out = -1
        path.unlink(missing_ok=True)
        raise
    finally:
        if out >= 0:
            os.close(out)


def copy_file(root: Path, relative: str, dst: Path, limit: int = FILE_LIMIT, what: str = "") -> None:
    """One file L1 wrote under the share `root` into `dst`, whole or not at all (a
    temporary sibling renamed over it); `what` names it in errors."""
    *parts, name = relative.split("/")
    what = what or f"L1's {name}"
    dir_fd = _open_dir(root, parts)
    try:
        fd, _ = _open_file(dir_fd, name, what, limit)
    finally:
        os.close(dir_fd)
    try:
        with replacing(dst) as tmp:
            _copy(fd, tmp, limit)
    except Refused:
        raise Refused(f"{what}: grew past the bound of {limit} bytes while copied") from None
    finally:
        os.close(fd)


def _remove(root: Path, relative: str) -> None:
    """The tree out of the share (shutil.rmtree does not follow links)."""
    shutil.rmtree(root / relative, ignore_errors=True)
