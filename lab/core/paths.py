"""Where kvmlab keeps things.

- the project checkout: what runs inside the guests under images/ (l1/, l2/), the lab
  config, kernel fragments and scenario suites under configs/;
- the cache (built images: large, rebuilt on demand): $KVMLAB_CACHE_DIR, else
  $XDG_CACHE_HOME/kvmlab, else ~/.cache/kvmlab;
- the runtime directory (one private directory per running lab: sockets, pid, console log,
  share): $KVMLAB_RUNTIME_DIR, else $XDG_RUNTIME_DIR/kvmlab, else /tmp/kvmlab-UID.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lab.core.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = PROJECT_ROOT / "images"
#: L1's recipe, initramfs, root overlay, C helpers and Python runner.
L1_IMAGE_DIR = IMAGES_DIR / "l1"
#: The L2 guests' code: the touch payload and the L2 Linux's /init.
L2_IMAGE_DIR = IMAGES_DIR / "l2"
CONFIGS_DIR = PROJECT_ROOT / "configs"
#: Scenario suites: one directory of YAML files each.
SUITES_DIR = CONFIGS_DIR / "suites"


def cache_dir() -> Path:
    if os.environ.get("KVMLAB_CACHE_DIR"):
        return Path(os.environ["KVMLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kvmlab"


def runtime_dir() -> Path:
    if os.environ.get("KVMLAB_RUNTIME_DIR"):
        return Path(os.environ["KVMLAB_RUNTIME_DIR"]).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "kvmlab"
    return Path(f"/tmp/kvmlab-{os.getuid()}")


def private_dir(path: Path) -> Path:
    """Creates `path` (mode 0700) or checks that an existing one is ours and private.

    Lab sockets give control of a VM: a directory another user owns or can enter is refused.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path}: not a directory; remove it or set KVMLAB_RUNTIME_DIR")
    if st.st_uid != os.getuid():
        raise UserError(f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); "
                        "set KVMLAB_RUNTIME_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
