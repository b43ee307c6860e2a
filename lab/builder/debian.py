"""Debian's arm64 packages: fetched with mmdebstrap, unpacked with dpkg-deb, no root needed.

mmdebstrap resolves the dependencies against the suite's package lists and checks the
archive's signatures; with `--skip=extract` it only downloads, and a hook copies the .deb
files out. No mirror is named here: mmdebstrap's default is used unless the config
(images.mirror) or KVMLAB_MIRROR says otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from lab.core.errors import ImageError, UserError
from lab.core.progress import Step


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    arch: str
    path: Path
    sha256: str

    @classmethod
    def from_file(cls, path: Path) -> "Deb":
        name, version, arch = unquote(path.name[: -len(".deb")]).split("_")
        return cls(name, version, arch, path, sha256_file(path))

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: What apt says when the archive cannot be reached at all.
UNREACHABLE = ("Could not resolve", "Temporary failure resolving", "Connection failed", "Unable to connect",
               "Network is unreachable", "Could not connect", "Connection refused", "No route to host",
               "Connection timed out")


#: What apt says when an archive's Release file is unsigned or its signature does not verify.
UNSIGNED = ("is not signed", "NO_PUBKEY", "BADSIG", "signatures were invalid", "signatures couldn't be verified",
            "EXPKEYSIG")


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"{name} is not installed; run scripts/setup (or apt-get install {package})")
    return path


@functools.cache
def version_line(program: str) -> str:
    """`program --version`'s first line ("" if it says nothing): a cache key's input, asked
    once per process (an image listing or a suite reads the keys of every kind)."""
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else ""


def _host_apt_options() -> list[str]:
    """apt options of the host that the download must follow too.

    A host whose apt is told not to check Release files' Valid-Until (a snapshot or a
    frozen mirror) needs the same here, or `sid` fails as "expired". Signatures are
    still checked.
    """
    if shutil.which("apt-config") is None:
        return []
    result = subprocess.run(["apt-config", "shell", "V", "Acquire::Check-Valid-Until"],
                            capture_output=True, text=True)
    if "V='false'" in result.stdout:
        return ['Acquire::Check-Valid-Until "false"']
    return []


def _only_suite_hook(suite: str) -> str:
    """A setup hook keeping only SUITE itself in sources.list (no -updates, -security)."""
    script = (
        'f="$1/etc/apt/sources.list"; [ -f "$f" ] || exit 0; '
        f"awk -v s={shlex.quote(suite)} "
        "'{ line = $0; gsub(/\\[[^]]*\\]/, \"\", line); split(line, w, \" \") } "
        "w[1] ~ /^deb/ && w[3] != s { next } { print }' \"$f\" > \"$f.kvmlab\" && mv \"$f.kvmlab\" \"$f\""
    )
    return script


def fetch(suite: str, packages: list[str], dest: Path, *, mirror: str = "", updates: bool = False,
          step: Step | None = None, log: Path | None = None) -> list[Deb]:
    """Downloads `packages` and their dependencies for arm64 from `suite` into `dest`."""
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        mmdebstrap, "--variant=extract", "--architectures=arm64", "--skip=extract",
        "--include=" + ",".join(packages),
        # sync-out, not cp: as an ordinary user mmdebstrap runs hooks inside a user
        # namespace, where only its own copy commands can write to the user's files.
        f"--extract-hook=sync-out /var/cache/apt/archives {shlex.quote(str(dest))}",
    ]
    for option in _host_apt_options():
        cmd.append("--aptopt=" + option)
    if not updates and not mirror:
        cmd.append("--setup-hook=" + _only_suite_hook(suite))
    cmd += [suite, "/dev/null"]
    if mirror:
        cmd.append(mirror)
    lines: list[str] = []
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if step is not None:
                step.update(line)
    if log is not None:
        log.write_text("$ " + shlex.join(cmd) + "\n" + "".join(lines))
    if proc.returncode != 0:
        errors = [line.rstrip() for line in lines if line.startswith(("E:", "W:"))]
        tail = "\n".join((errors or [line.rstrip() for line in lines])[-12:])
        hint = ""
        text = "".join(lines)
        unreachable = [line.strip() for line in lines if line.startswith("E: Failed to fetch")
                       and any(s in line for s in UNREACHABLE)]
        if unreachable or ("E: Failed to fetch" not in text and any(s in text for s in UNREACHABLE)):
            # Not the lab's failure: the archive cannot be reached from here. One line, exit 2.
            seen = (unreachable or [next(line.strip() for line in lines if any(s in line for s in UNREACHABLE))])[0]
            raise UserError(f"no Debian package archive reachable for {suite} (arm64) ({seen[:200]}); "
                            "check the network, or name a mirror in KVMLAB_MIRROR or the config's images.mirror")
        signature = [line.strip() for line in lines if line.startswith("E:") and any(s in line for s in UNSIGNED)]
        if signature:
            raise ImageError(f"the package archive for {suite} failed apt's signature check ({signature[0][:200]}); "
                             "kvmlab never turns signature checks off: use a mirror signed with a key from "
                             "debian-archive-keyring (KVMLAB_MIRROR or images.mirror)", detail=tail)
        if any(s in text for s in ("Unable to locate package", "has no installation candidate", "was not found")):
            hint = (f"; not in Debian {suite}'s arm64 package lists (the archive keeps each suite's current "
                    "packages only: a mirror with older ones can be named in KVMLAB_MIRROR)")
        raise ImageError(f"downloading {', '.join(packages)} from Debian {suite} (arm64) failed{hint}",
                         detail=tail)
    debs = sorted((Deb.from_file(p) for p in dest.glob("*.deb")), key=lambda d: d.name)
    if not debs:
        raise ImageError(f"mmdebstrap downloaded no packages for {', '.join(packages)} from {suite}")
    return debs


def unpack(debs: list[Deb], root: Path, step: Step | None = None) -> None:
    """Unpacks the packages' files (no maintainer scripts run) into `root`."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    root.mkdir(parents=True, exist_ok=True)
    for i, deb in enumerate(debs, 1):
        if step is not None:
            step.update(f"{i}/{len(debs)} {deb.name}")
        result = subprocess.run([dpkg_deb, "-x", str(deb.path), str(root)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"unpacking {deb.path.name} failed", detail=result.stderr.strip())
