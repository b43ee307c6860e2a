"""The L2 Linux guests' kernel: tinyconfig + configs/kernel/l2.config, cross-compiled from
Debian's source of trixie's kernel (the source entry `kvmlab kernel source` keeps), once,
and cached like the images.

One kernel for every L1: a matrix compares L1 kernels on the very same guest and workload
(the L2 Linux scenarios compare fault counts under two L1 THP modes). Debian's own kernel
did the job before; nested under TCG it took 3.5 s to reach /init and 7 s a run in L1,
this one 0.6 s and 2-3 s (measured in L1 on trixie). Built cold in 4 min on a 2-core
machine; with ccache warm, a fraction of that.

    l2kernel-trixie-KEY/Image          what L1's QEMU boots (-kernel)
    l2kernel-trixie-KEY/config         its .config
    l2kernel-trixie-KEY/build.log      make's output
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from lab.builder import debian
from lab.core.paths import CONFIGS_DIR
from lab.core.progress import Progress
from lab.kernels import source as kernel_build

#: The Debian suite whose kernel source the L2 kernel is built from.
SUITE = "trixie"
FRAGMENT = CONFIGS_DIR / "kernel" / "l2.config"


def compiler() -> str:
    """The cross compiler's version line (a key input); one clear line if it is missing."""
    kernel_build.check_tools("building the L2 Linux guests' kernel (from Debian's source, once)")
    return debian.version_line(f"{kernel_build.CROSS}gcc")


def inputs(source_manifest: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "l2kernel", "base": "tinyconfig", "fragment": FRAGMENT.read_text(),
            "source": {k: source_manifest.get(k) for k in ("package", "version", "tarball_sha256")},
            "compiler": compiler()}


def build(work: Path, tree: Path, progress: Progress, step) -> dict[str, Any]:
    """Builds into a scratch directory (its objects are not kept: ccache has them) and
    keeps the Image, the config and the log."""
    step.update(f"tinyconfig + {FRAGMENT.name} from {tree.name}")
    with tempfile.TemporaryDirectory(prefix="l2kernel-", dir=work.parent) as scratch:
        out = Path(scratch)
        result = kernel_build.build(tree, out, [FRAGMENT], base="tinyconfig", progress=progress, l1=False)
        shutil.copyfile(result.image, work / "Image")
        shutil.copyfile(out / ".config", work / "config")
        shutil.copyfile(out / "kvmlab-build.log", work / "build.log")
    return {"release": result.release, "seconds": result.seconds}
