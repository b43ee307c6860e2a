"""L1's root filesystem and initramfs, from Debian's packages and images/l1/: unpacked,
overlaid, its C helpers compiled, packed as a read-only squashfs."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lab.builder import debian
from lab.builder.cpio import CpioWriter
from lab.core.errors import ImageError, UserError
from lab.core.paths import L1_IMAGE_DIR
from lab.core.progress import Step

#: Directories L1 mounts something on: they must exist in the read-only root.
MOUNT_POINTS = ("dev", "proc", "sys", "run", "tmp", "root", "home", "var/tmp", "mnt/share")


def build(work: Path, suite: str, packages: list[str], mirror: str, updates: bool, initramfs_applets: list[str],
          step: Step) -> dict[str, Any]:
    """work/root (L1's root: Debian's packages unpacked, images/l1/rootfs laid over it,
    the helpers compiled), work/root.sqfs and work/initramfs.cpio; returns the manifest."""
    debs = debian.fetch(suite, packages, work / "debs", mirror=mirror, updates=updates,
                        step=step, log=work / "fetch.log")
    root = work / "root"
    debian.unpack(debs, root, step)
    step.update("adding the kvmlab overlay")
    # Debian's merged /usr: the top-level links come from base-files' maintainer
    # scripts, which extraction does not run.
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        if not (root / link).exists():
            os.symlink(target, root / link)
    if not (root / "usr/bin/sh").exists():
        os.symlink("busybox", root / "usr/bin/sh")
    for mount_point in MOUNT_POINTS:
        (root / mount_point).mkdir(parents=True, exist_ok=True)
    shutil.copytree(L1_IMAGE_DIR / "rootfs", root, symlinks=True, dirs_exist_ok=True)
    step.update("compiling the L1 helpers")
    compile_helper(L1_IMAGE_DIR / "src" / "snaphelper.c", root / "kvmlab" / "snaphelper")
    step.update("compiling L1's Python standard library to byte code (L1's python3 under qemu-user)")
    compile_python(root)

    busybox = root / "usr/bin/busybox"
    if not busybox.exists():
        raise ImageError("the L1 userspace has no /usr/bin/busybox; keep busybox-static in images/l1/recipe.yaml")
    # Applet links made here, not by `busybox --install` at every boot. Last in PATH:
    # Debian's own programs win where both exist.
    applets = busybox_applets(busybox.read_bytes())
    (root / "kvmlab/bin").mkdir(parents=True, exist_ok=True)
    for applet in applets:
        os.symlink("../../usr/bin/busybox", root / "kvmlab/bin" / applet)
    writer = CpioWriter()
    for directory in ("dev", "newroot", "bin"):
        writer.mkdir(directory)
    writer.chardev("dev/console", 5, 1)
    writer.chardev("dev/kmsg", 1, 11)
    writer.chardev("dev/null", 1, 3, 0o666)
    writer.add_file("bin/busybox", busybox, 0o755)
    for applet in initramfs_applets:
        writer.symlink(f"bin/{applet}", "busybox")
    for path in sorted((L1_IMAGE_DIR / "initramfs").iterdir()):  # /init and the fstabs it mounts
        writer.add_file(path.name, path)
    (work / "initramfs.cpio").write_bytes(writer.getvalue())
    shutil.rmtree(work / "debs")
    step.update("packing the read-only root image")
    squash_root(root, work / "root.sqfs")
    return {
        "suite": suite,
        "packages": [d.as_dict() for d in debs],
        "artefacts": {"initramfs.cpio": debian.sha256_file(work / "initramfs.cpio"),
                      "root.sqfs": debian.sha256_file(work / "root.sqfs"),
                      "root/": tree_digest(root)},
    }


#: What libc6-dev-arm64-cross installs: the headers static arm64 helpers compile against.
ARM64_LIBC_HEADERS = Path("/usr/aarch64-linux-gnu/include/stdio.h")


def compile_helper(source: Path, binary: Path) -> None:
    """A small C program for L1, static (L1's libc does not matter), stripped."""
    gcc = debian.require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    if not ARM64_LIBC_HEADERS.exists():
        # only a Recommends of the cross compiler: without it gcc falls back on the host's
        # headers and fails deep inside them
        raise UserError(f"the arm64 C library headers are not installed ({ARM64_LIBC_HEADERS.parent} is missing); "
                        "run scripts/setup (or apt-get install libc6-dev-arm64-cross)")
    result = subprocess.run([gcc, "-static", "-Os", "-s", "-Wall", "-Werror", "-o", str(binary), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"compiling {source.name} for L1 failed", detail=result.stderr)


def compile_python(root: Path) -> None:
    """L1's Python standard library compiled to byte code here, once, by L1's own python3
    under qemu-user (the host's Python may be another version, with another byte code).
    The read-only root had no __pycache__, so every boot compiled what the scenario runner
    imports: its first start took 6.9 s under TCG, 1.1 s once the 63 modules were
    compiled (measured in L1). unchecked-hash: the image never changes, and packing it sets
    every file's time to 0. About 90 s here, cached with the image."""
    pythons = sorted(p for p in (root / "usr/bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    if not pythons:
        return
    qemu = debian.require_tool("qemu-aarch64", "qemu-user")
    python = pythons[-1]
    skip, lib = r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3)/", root / "usr/lib" / python.name
    result = subprocess.run([qemu, "-L", str(root), str(python), "-m", "compileall", "-q", "--invalidation-mode",
                             "unchecked-hash", "-s", str(root), "-p", "/", "-x", skip, str(lib)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"compiling L1's Python ({python.name}) under qemu-user failed",
                         detail=(result.stdout + result.stderr).strip()[-1500:])


def squash_root(root: Path, image: Path) -> None:
    """`root` as a squashfs image: uncompressed (nothing to inflate under TCG), every file
    root's, fixed times: the same tree gives the same bytes."""
    mksquashfs = debian.require_tool("mksquashfs", "squashfs-tools")
    result = subprocess.run([mksquashfs, str(root), str(image), "-noI", "-noD", "-noF", "-noX", "-no-xattrs",
                             "-all-root", "-mkfs-time", "0", "-all-time", "0", "-no-progress", "-quiet"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"mksquashfs failed on {root}: {(result.stderr or result.stdout).strip()[-500:]}")


def busybox_applets(binary: bytes) -> list[str]:
    """The applet names a busybox binary carries: one NUL-separated, sorted table that
    starts with "[" and "[[" and ends with an empty name."""
    start = binary.find(b"[\0[[\0")
    if start < 0:
        raise ImageError("cannot find busybox's applet table in /usr/bin/busybox")
    names = []
    for name in binary[start:].split(b"\0"):
        if not name:
            break
        names.append(name.decode("ascii"))
    if not {"sh", "mount", "cat", "insmod"} <= set(names) or "/" in "".join(names):
        raise ImageError("busybox's applet table does not look as expected (no sh, mount, cat, insmod)")
    return names


def tree_digest(root: Path) -> str:
    """One sha256 over a directory tree: every path, its type, mode and content or link target."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            else:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()
