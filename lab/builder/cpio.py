"""A deterministic writer for the "newc" cpio format the kernel unpacks as initramfs.

Every entry gets uid/gid 0 and mtime 0, so the same inputs give the same bytes: the
archive's sha256 in the manifest is then a real content key. Archives can be
concatenated; the kernel unpacks them one after the other.
"""

from __future__ import annotations

import stat
from pathlib import Path

_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Builds a newc archive in memory (initramfs pieces here are a few MB)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]
        self._ino += 1

    def mkdir(self, name: str, mode: int = 0o755) -> None:
        """Adds a directory and any missing parents."""
        path = ""
        for part in name.strip("/").split("/"):
            path = f"{path}/{part}" if path else part
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | mode)

    def _parent(self, name: str) -> None:
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.mkdir(parent)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_file(self, name: str, source: Path, mode: int | None = None) -> None:
        if mode is None:
            mode = 0o755 if source.stat().st_mode & 0o111 else 0o644
        self.add_bytes(name, source.read_bytes(), mode)

    def symlink(self, name: str, target: str) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def getvalue(self) -> bytes:
        trailer = CpioWriter()
        trailer._ino = 0
        trailer._entry(_TRAILER, 0)
        return b"".join(self._parts + trailer._parts)


def read_entries(data: bytes) -> dict[str, bytes]:
    """The entries of a newc archive (or of concatenated ones), name -> contents; a later
    entry of a name wins, as in the kernel's unpacking."""
    entries: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos:pos + 6] != b"070701":
            # Concatenated archives may be padded with zeros between them.
            if data[pos] == 0:
                pos += 1
                continue
            raise ValueError(f"not a newc cpio archive at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name != _TRAILER:
            entries.pop(name, None)
            entries[name] = body
    return entries


def read_names(data: bytes) -> list[str]:
    """Names of the entries in a newc archive (used by tests and `images list`)."""
    return list(read_entries(data))
