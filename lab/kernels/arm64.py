"""Recognising an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst: the 64-byte
header carries the magic "ARM\\x64" at offset 0x38)."""

from __future__ import annotations

from pathlib import Path

ARM64_MAGIC = b"ARM\x64"


def image_problem(path: Path) -> str | None:
    """None if `path` is an arm64 Image, else what is wrong with it, in a few words."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a directory, not a file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    if len(header) == 64 and header[0x38:0x3C] == ARM64_MAGIC:
        return None
    if header[:2] == b"\x1f\x8b":
        return "gzip-compressed: give the uncompressed Image (arch/arm64/boot/Image)"
    if header[:4] == b"\x7fELF":
        return "an ELF file such as vmlinux: give arch/arm64/boot/Image"
    return "not an arm64 Linux Image (no ARM\\x64 magic at offset 0x38)"
