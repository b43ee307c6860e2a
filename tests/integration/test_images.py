"""Images built from Debian's real packages: manifests, caching, interrupted builds."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.builder.build import Builder
from lab.builder.cpio import read_names
from lab.config import load_config
from tests.conftest import kvmlab

pytestmark = pytest.mark.boot


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built():
    builder = Builder()
    config = load_config()
    return builder.kernel(config), builder.rootfs(config)


def test_kernel_manifest_names_every_package_and_artefact(built):
    kernel, _ = built
    manifest = kernel.manifest
    assert manifest["suite"] == "trixie" and manifest["release"].startswith("6.12.")
    names = {p["name"] for p in manifest["packages"]}
    assert any(n.startswith("linux-image-6.12") for n in names)
    assert all(p["version"] and len(p["sha256"]) == 64 for p in manifest["packages"])
    for name, digest in manifest["artefacts"].items():
        assert sha256(kernel.image.parent / name) == digest
    assert "9p" in manifest["modules"]
    early = [n for n in read_names(kernel.modules_cpio.read_bytes()) if n.endswith(".ko")]
    late = [p.name for p in kernel.late_modules.glob("*.ko")]
    names = sorted([n.rsplit("/", 1)[1] for n in early] + late)
    assert [n.split("-", 1)[1][:-3] for n in names] == manifest["modules"]
    assert [n.split("-", 1)[1][:-3] for n in sorted(late)] == manifest["modules_late"]
    assert "9p" not in manifest["modules_late"]  # L1's root needs it before anything else


def test_rootfs_has_the_l1_tools(built):
    _, rootfs = built
    packages = {p["name"]: p["version"] for p in rootfs.manifest["packages"]}
    assert {"busybox-static", "qemu-system-arm", "python3"} <= set(packages)
    for tool in ("usr/bin/busybox", "usr/bin/qemu-system-aarch64", "usr/bin/python3", "kvmlab/run", "etc/inittab",
                 "kvmlab/bin/sh", "kvmlab/bin/insmod", "kvmlab/bin/sha256sum"):
        assert (rootfs.root / tool).exists(), tool
    assert "init" in read_names(rootfs.initramfs.read_bytes())
    assert sha256(rootfs.initramfs) == rootfs.manifest["artefacts"]["initramfs.cpio"]
    # L1's Python library comes compiled (lab/builder/rootfs.py), by L1's own python3
    [lib] = [p for p in (rootfs.root / "usr/lib").glob("python3.*") if (p / "json").is_dir()]
    tag = f"cpython-{lib.name[len('python'):].replace('.', '')}"
    for module in ("json/__init__", "subprocess", "ctypes/__init__", "threading"):
        folder, name = (lib / module).parent, (lib / module).name
        pyc = folder / "__pycache__" / f"{name}.{tag}.pyc"
        assert pyc.is_file(), pyc
        assert pyc.read_bytes()[4:8] == b"\x01\x00\x00\x00"  # PEP 552 flags: hash-based, unchecked


def test_second_build_is_a_no_op(built):
    # The first builds what `built` does not: the L2 Linux kernel, on a new machine (from
    # Debian's kernel source: minutes).
    first = kvmlab("-q", "images", "build", timeout=1800)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    result = kvmlab("images", "build")
    assert result.returncode == 0
    assert b"Building" not in result.stderr
    kernel, rootfs = built
    assert str(rootfs.root) in result.stdout.decode() and str(kernel.image) in result.stdout.decode()
    # and the L2 Linux guests' kernel the thp suite boots, cached like the images
    assert re.search(r"^l2kernel: \S+/l2kernel-trixie-\w+/Image$", result.stdout.decode(), re.M)


def test_images_list_json(built):
    entries = json.loads(kvmlab("images", "list", "--json").stdout)
    kinds = {(e["kind"], e.get("suite")) for e in entries}  # tools entries have no suite
    assert {("kernel", "trixie"), ("rootfs", "trixie")} <= kinds


def test_interrupted_build_leaves_no_entry(tmp_path):
    cache = tmp_path / "cache"
    env = {"KVMLAB_CACHE_DIR": str(cache)}
    import os
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "images", "build", "--kernel", "bookworm"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (cache / "tmp").is_dir() or not any((cache / "tmp").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    time.sleep(1.0)  # well into the download
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    # No entry, no temporary directory; a first build that fails removes the cache it made.
    assert not any(p for d in ("images", "tmp") if (cache / d).is_dir() for p in (cache / d).iterdir())


def test_images_list_marks_current_entries(built):
    table = kvmlab("images", "list").stdout.decode()
    assert "current" in table and "trixie" in table


def test_clean_stale_keeps_what_this_kvmlab_uses(built, tmp_path):
    import shutil

    from lab.builder.store import Store

    store = Store()
    kernel, _ = built
    old = store.images / "kernel-trixie-0000000000000000"
    shutil.copytree(kernel.image.parent, old, ignore=shutil.ignore_patterns("Image"))
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "key": "0" * 64}))
    # What `images build` builds from trixie's kernel (cached by test_second_build_is_a_no_op):
    # the L2 Linux kernel and the source it is built from are current too.
    cfg = load_config()
    l2 = Builder().l2_kernel(cfg.mirror, cfg.updates)
    sources = [e.path for e in store.entries() if e.manifest["kind"] == "source" and e.manifest["suite"] == "trixie"]
    result = kvmlab("images", "clean", "--stale")
    assert result.returncode == 0 and b"Removed stale" in result.stdout
    assert not old.exists()
    assert kernel.image.exists()
    assert l2.exists() and any(path.exists() for path in sources)
