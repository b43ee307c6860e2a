"""Kernel modules of an unpacked kernel tree: find them, read their dependencies, order them.

Debian's packages ship no modules.dep (depmod makes it at install time and nothing is
installed here), so dependencies come from each module's own `.modinfo` section. Only the
modules the lab asks for and what they depend on are read, so this stays fast even for a
kernel with four thousand modules.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import ImageError

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(filename: str) -> str:
    """`9pnet_virtio.ko.xz` -> `9pnet_virtio`; dashes and underscores are the same to kmod."""
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise ImageError(f"{path}: zstd-compressed modules are not supported (Debian's kernels use xz)")
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 little-endian module's `.modinfo` section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name:end] != b".modinfo":
            continue
        for item in elf[offset: offset + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    depends: tuple[str, ...]


class ModuleTree:
    """`lib/modules/VERSION` of an unpacked kernel."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, Path] = {}
        for path in root.rglob("*.ko*"):
            if path.name.endswith(SUFFIXES):
                self.files.setdefault(module_name(path.name), path)
        builtin = root / "modules.builtin"
        self.builtin: set[str] = set()
        if builtin.exists():
            self.builtin = {module_name(line.rsplit("/", 1)[-1]) for line in builtin.read_text().split()}
        #: each module's .modinfo read once (a decompression each), whatever asks how often
        self._modules: dict[str, Module] = {}

    def module(self, name: str) -> Module:
        if name not in self._modules:
            path = self.files[name]
            depends = modinfo(decompress(path)).get("depends", [""])[0]
            self._modules[name] = Module(name, path, tuple(d.replace("-", "_") for d in depends.split(",") if d))
        return self._modules[name]

    def load_order(self, wanted: list[str], optional: list[str] | tuple[str, ...] = ()) -> list[Module]:
        """Modules to insmod, dependencies first; built-in ones are skipped.

        A wanted module that is neither built in nor shipped is an error; an optional one
        is left out.
        """
        order: list[Module] = []
        seen: set[str] = set()

        def visit(name: str, required: bool, chain: tuple[str, ...]) -> None:
            name = name.replace("-", "_")
            if name in seen or name in self.builtin:
                return
            if name not in self.files:
                if required:
                    via = f" (needed by {' -> '.join(chain)})" if chain else ""
                    raise ImageError(
                        f"kernel module {name}{via} is neither built in nor shipped in {self.root}; "
                        "use a kernel with it enabled (configs/kernel/kvmlab.config has the list)"
                    )
                return
            seen.add(name)
            module = self.module(name)
            for dep in module.depends:
                visit(dep, True, chain + (name,))
            order.append(module)

        for name in wanted:
            visit(name, True, ())
        for name in optional:
            visit(name, False, ())
        return order
