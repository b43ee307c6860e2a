"""Debian's source of a Debian kernel, for building L1 kernels and the KVM selftests from
exactly the code L1 runs: the `linux-source-X.Y` package of the kernel's own suite, at the
version of the kernel's packages (its cache manifest records them), fetched like every
other package (lab/builder/debian.py) and kept unpacked in the image cache.

    source-SUITE-KEY/linux-source-X.Y/    the tree (`kvmlab kernel build --src` takes it)
    source-SUITE-KEY/manifest.json        package, version, the tarball's sha256

A version the archive no longer carries (a kernel pinned long ago) is one line naming
the package and version, with what to do (a mirror that keeps it: KVMLAB_MIRROR).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lab.builder import debian
from lab.builder.store import Entry
from lab.core.errors import ImageError, UserError

_UPSTREAM = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)*")


def kernel_version(manifest: dict[str, Any]) -> str:
    """The Debian version of a kernel entry's own package ("7.2.13-1")."""
    release = manifest.get("release", "")
    for deb in manifest.get("packages", []):
        if deb["name"] in (f"linux-image-{release}", f"linux-binary-{release}"):
            return str(deb["version"])
    raise UserError(f"kernel {manifest.get('label', '?')} ({release or 'no release'}): its cache entry names no "
                    "Debian kernel package, so there is no Debian source for it; give the tree with --src")


def package_for(version: str) -> str:
    """linux-source-X.Y for a kernel package version ("6.1.176-1" -> linux-source-6.1)."""
    m = _UPSTREAM.match(version)
    if m is None:
        raise UserError(f"kernel package version {version!r}: not an upstream X.Y version")
    return f"linux-source-{m.group(1)}.{m.group(2)}"


def inputs_for(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies the source of a Debian kernel entry (its cache key's inputs)."""
    version = kernel_version(manifest)
    kernel_inputs = manifest.get("inputs", {})
    return {"kind": "source", "suite": manifest["suite"], "package": package_for(version), "version": version,
            "mirror": kernel_inputs.get("mirror", ""), "updates": bool(kernel_inputs.get("updates", False))}


def build(work: Path, inputs: dict[str, Any], step) -> dict[str, Any]:
    """Fetches the package and unpacks its tarball into work/ (Store.build's builder)."""
    package, version = inputs["package"], inputs["version"]
    try:
        debs = debian.fetch(inputs["suite"], [f"{package}={version}"], work / "debs", mirror=inputs["mirror"],
                            updates=inputs["updates"], step=step, log=work / "fetch.log")
    except ImageError as exc:
        if "not in Debian" in str(exc) or "was not found" in (exc.detail or ""):
            raise UserError(f"{package} {version} (the source of the kernel L1 boots) is not in Debian "
                            f"{inputs['suite']}'s archive any more; name a mirror that keeps it in KVMLAB_MIRROR "
                            "or images.mirror, or give the tree with --src") from None
        raise
    deb = next((d for d in debs if d.name == package), None)
    if deb is None or deb.version != version:
        got = f"{deb.name} {deb.version}" if deb else "no " + package
        raise ImageError(f"asked Debian {inputs['suite']} for {package} {version}, got {got}")
    step.update(f"unpacking {package} {version}")
    tarball = _tarball_of(deb, work)
    digest = debian.sha256_file(tarball)
    into = work / "x"
    into.mkdir()
    # GNU tar, not tarfile.extractall: its filter= is 3.11.4+ (Debian 12 has 3.11.2)
    untar = subprocess.run(["tar", "-xf", str(tarball), "-C", str(into), "--no-same-owner"],
                           capture_output=True, text=True)
    top = sorted(p.name for p in into.iterdir())
    if untar.returncode != 0 or len(top) != 1:
        raise ImageError(f"unpacking {tarball.name} failed ({untar.stderr.strip()[-200:] or f'top level: {top[:5]}'})")
    tree = work / top[0]
    (into / top[0]).rename(tree)
    into.rmdir()
    if not (tree / "Makefile").is_file() or not (tree / "arch/arm64").is_dir():
        raise ImageError(f"{tarball.name} holds no kernel tree ({tree.name}/Makefile, arch/arm64)")
    tarball.unlink()
    shutil.rmtree(work / "debs")
    return {"suite": inputs["suite"], "package": package, "version": version, "tree": tree.name,
            "tarball_sha256": digest, "deb": deb.as_dict()}


def _tarball_of(deb: debian.Deb, work: Path) -> Path:
    """usr/src/linux-source-X.Y.tar.xz out of the .deb."""
    unpacked = work / "deb"
    debian.unpack([deb], unpacked)
    found = sorted((unpacked / "usr/src").glob("linux-source-*.tar.*"))
    if len(found) != 1:
        raise ImageError(f"{deb.path.name}: expected one usr/src/linux-source-*.tar.*, found {len(found)}")
    tarball = work / found[0].name
    found[0].rename(tarball)
    shutil.rmtree(unpacked)
    return tarball


def tree_of(entry: Entry) -> Path:
    return entry.path / entry.manifest["tree"]
