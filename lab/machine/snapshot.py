"""Snapshots of a ready L1: saved once with QMP migration to a file, restored with
`-incoming`, so a later `kvmlab up` skips L1's boot.

A snapshot is only valid for the very machine it was taken on, so its key covers
everything that machine is made of: the kernel and L1 image entries, the QEMU binary
(path, size, mtime, version) and the whole L0 command line with the lab's own directory
and name taken out (any lab may restore it). Each lives in the image cache:

    CACHE/snapshots/KEY/vmstate     QEMU's migration stream (guest RAM and device state)
    CACHE/snapshots/KEY/meta.json   what `up` reports (release, KVM mode, THP), the inputs

Both are written to temporary names first and renamed when complete; a folder without
meta.json is not a snapshot. The folder is the user's alone (it holds L1's memory).

What a restore must mend (lab/machine/snapshotting.py, images/l1/rootfs/kvmlab/snapshot): the share
is mounted again (it was unmounted for the save: a mounted 9p export blocks migration),
the wall clock is set from the host's, and the CRNG is reseeded from host randomness, so
restored labs do not draw the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.paths import cache_dir, private_dir
from lab.shared.files import write_atomic

#: Bumped when what a snapshot holds, or how it is restored, changes.
FORMAT = 1


@dataclass
class Snapshot:
    key: str
    dir: Path
    #: What the key was made of (kept in meta.json); empty for one found on disk.
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def vmstate(self) -> Path:
        return self.dir / "vmstate"

    @property
    def meta_file(self) -> Path:
        return self.dir / "meta.json"

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return None

    def exists(self) -> bool:
        return self.vmstate.is_file() and self.meta() is not None


def root() -> Path:
    return cache_dir() / "snapshots"


def machine_command(command: list[str], lab_dir: Path, name: str) -> list[str]:
    """The L0 command line without what is particular to one lab (its directory, its name)."""
    out = []
    for arg in command:
        arg = arg.replace(str(lab_dir), "@LAB")
        out.append("kvmlab-@NAME" if arg == f"kvmlab-{name}" else arg)
    return out


def qemu_identity(binary: str) -> dict[str, Any]:
    from lab.machine.qemu import qemu_version

    real = os.path.realpath(binary)
    st = os.stat(real)
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": qemu_version(binary)}


def key_for(command: list[str], lab_dir: Path, name: str, kernel_key: str, rootfs_key: str, tools_key: str,
            binary: str) -> tuple[str, dict[str, Any]]:
    # The tools too: a snapshot holds L1's scenario runner, started from them; restored
    # with other tools, its first scenario waited 4-5 s for the runner's restart (measured).
    inputs = {"format": FORMAT, "kernel": kernel_key, "rootfs": rootfs_key, "tools": tools_key,
              "qemu": qemu_identity(binary),
              "command": machine_command(command[1:], lab_dir, name)}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest[:24], inputs


def lookup(key: str, inputs: dict[str, Any] | None = None) -> Snapshot:
    return Snapshot(key, root() / key, inputs or {})


def prepare(snapshot: Snapshot) -> Path:
    """A private folder for the snapshot and the temporary name QEMU writes the state to."""
    root().parent.mkdir(parents=True, exist_ok=True)
    private_dir(root())
    private_dir(snapshot.dir)
    return snapshot.dir / f"vmstate.tmp-{os.getpid()}"


def commit(snapshot: Snapshot, tmp: Path, meta: dict[str, Any]) -> None:
    os.chmod(tmp, 0o600)
    os.replace(tmp, snapshot.vmstate)
    meta = {**meta, "key": snapshot.key, "bytes": snapshot.vmstate.stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(snapshot.meta_file, json.dumps(meta, indent=2) + "\n", mode=0o600)


def discard(snapshot: Snapshot) -> None:
    shutil.rmtree(snapshot.dir, ignore_errors=True)


def all_snapshots() -> list[Snapshot]:
    if not root().is_dir():
        return []
    return [Snapshot(p.name, p) for p in sorted(root().iterdir()) if p.is_dir()]


def clean(images: set[str] | None = None) -> int:
    """Removes snapshots (all if `images` is None; else those whose kernel or L1 image key
    is not in `images`); returns the bytes freed."""
    from lab.builder.store import tree_size

    freed = 0
    for snap in all_snapshots():
        inputs = (snap.meta() or {}).get("inputs", {})
        if images is None or inputs.get("kernel") not in images or inputs.get("rootfs") not in images:
            freed += tree_size(snap.dir)
            discard(snap)
    return freed
