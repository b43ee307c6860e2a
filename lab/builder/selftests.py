"""The kernel's own KVM selftests (tools/testing/selftests/kvm), cross-compiled for arm64
from a kernel tree: Debian's source of the kernel L1 boots (lab/builder/source.py), or a
user's tree.

    selftests-LABEL-KEY/bin/NAME            each test, static and stripped (arm64/ and
                                            aarch64/ tests keep their directory: bin/arm64/vgic_init)
    selftests-LABEL-KEY/build.log           make's whole output
    selftests-LABEL-KEY/manifest.json       the tree, its identity, the toolchain, the tests

The UAPI headers come from the same tree (`make O=... headers`, into the build directory:
the tree is never written to; the arm64 sysreg header the selftests generate goes there
too, through `abs_objdir`). The tests are linked statically, so L1's libc does not matter.
The key is over the tree's identity (a Debian source's tarball digest; for a user's tree
the size and mtime of every file the build reads) and the toolchain's version, so a later
run finds the build in well under a second. A build that fails leaves no entry; its log is
kept under the cache's logs/ and named in the one-line error.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.builder import debian
from lab.core.errors import ImageError, UserError
from lab.core.paths import cache_dir

CROSS = "aarch64-linux-gnu-"
#: What the selftests build reads from a tree, besides the selftests themselves.
READ_DIRS = ("tools/testing/selftests/kvm", "tools/testing/selftests/lib.mk", "tools/testing/selftests/kselftest.h",
             "tools/testing/selftests/kselftest_harness.h", "tools/include", "tools/arch/arm64", "tools/lib",
             "tools/scripts", "include/uapi", "arch/arm64/include/uapi", "arch/arm64/tools",
             "scripts/Makefile.extrawarn")
#: Bump when the way of building changes.
RECIPE = 2


def kvm_dir(tree: Path) -> Path:
    return tree / "tools/testing/selftests/kvm"


def check_tree(tree: Path) -> None:
    if not (tree / "Makefile").is_file() or not (tree / "arch/arm64").is_dir():
        raise UserError(f"--src {tree}: not a Linux source tree (no Makefile and arch/arm64 there)")
    if not (kvm_dir(tree) / "Makefile").is_file():
        raise UserError(f"--src {tree}: has no tools/testing/selftests/kvm/Makefile; the KVM selftests "
                        "came with Linux 4.x, give a newer tree")
    if (tree / ".config").exists() or (tree / "include/config").is_dir():
        raise UserError(f"--src {tree}: it has been configured or built in place (.config), so `make O=` "
                        "refuses it; run `make mrproper` there, or give a clean tree (git worktree add)")


def toolchain() -> str:
    """The cross compiler's version line (a key input): one line saying what to install if absent."""
    gcc = shutil.which(f"{CROSS}gcc")
    if gcc is None or shutil.which("make") is None:
        raise UserError(f"building the KVM selftests needs make and {CROSS}gcc; install them: "
                        "apt-get install make gcc-aarch64-linux-gnu (scripts/setup does)")
    return debian.version_line(gcc) or gcc


def tree_digest(tree: Path) -> str:
    """Size and mtime of every file the build reads (a user's tree: edits rebuild)."""
    digest = hashlib.sha256()
    for rel in READ_DIRS:
        top = tree / rel
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in paths:
            try:
                st = path.lstat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def inputs_for(tree: Path, identity: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "selftests", "recipe": RECIPE, "tree": str(tree), "identity": identity, "toolchain": toolchain()}


def build(work: Path, tree: Path, jobs: int, step) -> dict[str, Any]:
    """Headers, then the selftests, then bin/: Store.build's builder. A failure raises
    with the log kept (keep_log)."""
    log_path = work / "build.log"
    started = time.monotonic()
    cross = {"ARCH": "arm64", "CROSS_COMPILE": CROSS}
    with open(log_path, "w") as log:
        step.update("UAPI headers")
        _make(["-C", str(tree), *_vars(cross), f"O={work / 'hdr'}", "headers"], log, log_path, "the UAPI headers")
        step.update("the KVM selftests (arm64, static)")
        out = work / "obj"
        (work / "gen" / "tools").mkdir(parents=True)
        # -k: a test that does not compile (a stable tree's backported test wanting a
        # header the tree lacks) is reported as such; the others still run.
        # INSTALL_HDR_PATH and an empty KSFT_KHDR_INSTALL: trees before 5.17 would run
        # `make headers_install` in the tree (writing to it, with rsync) otherwise.
        failed = _make(["-C", str(kvm_dir(tree)), *_vars(cross), f"OUTPUT={out}", f"abs_objdir={work / 'gen'}",
                        f"KHDR_INCLUDES=-isystem {work / 'hdr/usr/include'}", f"INSTALL_HDR_PATH={work / 'hdr/usr'}",
                        "KSFT_KHDR_INSTALL=", "LDFLAGS=-static", "-k", f"-j{jobs}"],
                       log, log_path, "the KVM selftests", tolerate=True)
    tests = _collect(out, work / "bin")
    if not tests:
        kept = keep_log(log_path)
        raise ImageError(f"building the KVM selftests failed ({first_error(kept)}); no test program was made; "
                         f"the whole log is kept at {kept}")
    errors = build_errors(log_path.read_text(errors="replace")) if failed else {}
    for d in ("hdr", "obj", "gen"):
        shutil.rmtree(work / d, ignore_errors=True)
    return {"tests": tests, "build_errors": errors, "seconds": round(time.monotonic() - started, 1)}


def build_errors(log: str) -> dict[str, str]:
    """Test name -> its first compiler error, from a `make -k` log ("aarch64/vgic_init.c:9:10:
    fatal error: linux/bitfield.h: ..." -> {"vgic_init": that line})."""
    out: dict[str, str] = {}
    for line in log.splitlines():
        m = re.match(r"^(?:\S*/)?([\w-]+)\.c:\d+:\d+: (?:fatal )?error: ", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = line.strip()[:300]
    return out


def _vars(values: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def _make(args: list[str], log, log_path: Path, what: str, tolerate: bool = False) -> bool:
    """make, its output into the log; True if it failed and `tolerate` (else it raises)."""
    log.write(f"$ make {' '.join(args)}\n")
    log.flush()
    proc = subprocess.run(["make", *args], stdout=log, stderr=subprocess.STDOUT, check=False,
                          env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0 and tolerate:
        return True
    if proc.returncode != 0:
        log.flush()
        kept = keep_log(log_path)
        raise ImageError(f"building {what} failed ({first_error(kept)}); the whole log is kept at {kept}")
    return False


def first_error(log: Path) -> str:
    """The first compiler or make error line of a build log."""
    lines = log.read_text(errors="replace").splitlines()
    compiler = [s for s in lines if ": error:" in s or ": fatal error:" in s]
    make = [s for s in lines if "*** " in s]
    return (compiler or make or lines[-1:] or ["no output"])[0].strip()[:200]


def keep_log(log_path: Path) -> Path:
    """The build log, copied out of the temporary build directory that is about to go."""
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kept = logs / f"selftests-build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    shutil.copyfile(log_path, kept)
    return kept


def _collect(out: Path, bin_dir: Path) -> list[str]:
    """Every executable the build made (not the objects), stripped into bin/, by name
    relative to the selftests directory ("demand_paging_test", "aarch64/vgic_init")."""
    names = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.suffix in (".o", ".d", ".a") or not os.access(path, os.X_OK):
            continue
        rel = path.relative_to(out)
        if rel.parts[0] == "lib":
            continue
        dest = bin_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        strip = subprocess.run([f"{CROSS}strip", "-o", str(dest), str(path)], capture_output=True, text=True)
        if strip.returncode != 0:
            shutil.copyfile(path, dest)
        os.chmod(dest, 0o755)
        names.append(str(rel))
    return names
