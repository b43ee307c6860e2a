"""Copying files between the host and L1, through the lab's share (the console is too slow)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import time
from pathlib import Path
from typing import Callable

from lab.core.errors import LabError, UserError
from lab.machine import share
from lab.machine.agent import GUEST_SHARE
from lab.machine.qemu import LabPaths

#: Runs a shell command in L1: (status, output).
Run = Callable[[str], tuple[int, str]]


def _xfer(paths: LabPaths) -> tuple[Path, str]:
    name = f"xfer-{os.getpid()}-{time.monotonic_ns()}"
    host = paths.share / ".kvmlab" / name
    host.parent.mkdir(parents=True, exist_ok=True)
    return host, f"{GUEST_SHARE}/.kvmlab/{name}"


def push(paths: LabPaths, run: Run, src: Path, dst: str) -> None:
    """Copies a host file into L1 (to `dst`, or into it if it is a directory), with its
    permission bits (a reproducer stays executable); setuid and setgid are not carried."""
    if not src.is_file():
        raise UserError(f"{src}: no such file on the host")
    mode = stat.S_IMODE(src.stat().st_mode) & 0o777
    host, guest = _xfer(paths)
    try:
        shutil.copyfile(src, host)
        script = (f'd={shlex.quote(dst)}; if [ -d "$d" ]; then d="$d/"{shlex.quote(src.name)}; fi; '
                  f'cp {guest} "$d" && chmod {mode:o} "$d"')
        status, output = run(script)
        if status != 0:
            raise LabError(f"copying to L1:{dst} failed: {output.strip()}")
    finally:
        host.unlink(missing_ok=True)


def pull(paths: LabPaths, run: Run, src: str, dst: Path) -> Path:
    """Copies an L1 file to the host; returns the host path written (never half a file)."""
    if dst.is_dir():
        dst = dst / os.path.basename(src.rstrip("/"))
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent}: no such directory on the host")
    host, guest = _xfer(paths)
    try:
        # The mode, printed by L1 (mapped-file keeps the share's copy 0600 on the host).
        # setuid/setgid dropped on the transfer copy: the host refuses such files from L1.
        status, output = run(f"cp {shlex.quote(src)} {guest} && chmod u-s,g-s {guest} "
                             f"&& stat -L -c %a {shlex.quote(src)}")
        if status != 0:
            raise LabError(f"copying L1:{src} failed: {output.strip()}")
        try:
            mode = int(output.strip().splitlines()[-1], 8) & 0o777
        except (ValueError, IndexError):
            mode = 0o644
        # Read as untrusted (no link followed, a regular file only), copied whole or not at all.
        share.copy_file(paths.share, f".kvmlab/{host.name}", dst, share.CP_LIMIT, f"L1:{src} (copied into the share)")
        os.chmod(dst, mode)
        return dst
    finally:
        host.unlink(missing_ok=True)
