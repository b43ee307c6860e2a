"""Snapshots (`kvmlab up --snapshot`) on the real QEMU and kernel: the first `up` saves a
ready L1, the next ones restore it, and a restored L1 is a working KVM host: its clock
reads the host's time and ticks, two restored labs draw different random numbers, and
on each Debian kernel a restored lab runs a scenario (the whole thp suite runs on a
restored lab in test_thp.py). A damaged snapshot is one clear error, no QEMU left.

Each run gets snapshots of its own: a unique `qemu.append` makes the machine, and so the
snapshot key, new (a restore would otherwise find one saved by an earlier run)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import kvmlab, l1_cached, qemu_pids_in

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def snap_config(tmp_path_factory):
    config = tmp_path_factory.mktemp("snap") / "lab.yaml"
    config.write_text(f"qemu:\n  append: kvmlab.test={secrets.token_hex(6)}\n")
    yield config
    from lab.machine import snapshot

    for snap in snapshot.all_snapshots():  # this run's only: its key has the unique append
        inputs = json.dumps((snap.meta() or {}).get("inputs", {}))
        if config.read_text().split("=")[1].strip() in inputs:
            snapshot.discard(snap)


def state(private_runtime: Path, name: str) -> dict:
    return json.loads((private_runtime / "labs" / name / "lab.json").read_text())


def guest(name: str, script: str) -> str:
    result = kvmlab("exec", "--name", name, "--timeout", "20", "--", "sh", "-c", script, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    return result.stdout.decode()


@pytest.fixture(scope="module")
def restored(snap_config, private_runtime):
    """A lab that saved the snapshot, then two labs restored from it."""
    first = kvmlab("up", "--name", "snap-save", "-c", str(snap_config), "--snapshot")
    assert first.returncode == 0, first.stderr.decode()
    assert "booted, snapshot saved" in first.stdout.decode()
    saved = state(private_runtime, "snap-save")
    assert saved["snapshot"]["how"] == "saved"
    # a lab about to be saved reads QEMU's files only after the save (resume)
    saved["warm_flag"] = (private_runtime / "labs/snap-save/share/.kvmlab/warm").exists()
    kvmlab("down", "--name", "snap-save")
    names = ["snap-a", "snap-b"]
    for name in names:
        result = kvmlab("up", "--name", name, "-c", str(snap_config), "--snapshot")
        assert result.returncode == 0, result.stderr.decode()
        assert "restored from its snapshot" in result.stdout.decode()
    yield names, saved
    for name in names:
        kvmlab("down", "--name", name)
        assert qemu_pids_in(private_runtime / "labs" / name) == []


def test_later_ups_restore_the_same_snapshot(restored, private_runtime):
    names, saved = restored
    for name in names:
        s = state(private_runtime, name)
        assert s["snapshot"]["how"] == "restored"
        assert s["snapshot"]["key"] == saved["snapshot"]["key"]
        assert "-incoming" in s["command"]
        assert s["ready"]["kvm_mode"] == "VHE" and s["ready"]["kvm_device"]


def test_the_snapshot_is_private_and_complete(restored):
    names, saved = restored
    folder = Path(saved["snapshot"]["file"]).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "vmstate").stat().st_mode) == 0o600
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["bytes"] == (folder / "vmstate").stat().st_size > 10 * 2**20
    assert not list(folder.glob("*.tmp-*"))


def test_a_restored_clock_reads_the_host_time_and_ticks(restored):
    name = restored[0][0]
    out = guest(name, "date +%s; read a _ < /proc/uptime; sleep 1; read b _ < /proc/uptime; echo $a $b")
    wall, uptimes = out.splitlines()
    assert abs(int(wall) - time.time()) < 3, f"L1's clock {wall} vs the host's {time.time():.0f}"
    before, after = map(float, uptimes.split())
    # A sleep that returns at all is the timers working (QEMU leaves the EL2 timer unarmed).
    assert 0.9 < after - before < 5


def test_a_restored_lab_has_its_scenario_runner_ready(restored, tmp_path):
    """The runner was started before the snapshot was saved: a restored L1 has it running,
    and the first scenario is its first job (no python start, no imports)."""
    name = restored[0][1]
    pid, _key, _started = guest(name, "cat /run/kvmlab/runner/pid").split()
    assert "l1.runner" in guest(name, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    result = kvmlab("test", "thp", "-k", "hugetlb-2m", "--name", name, "--results", str(tmp_path))
    assert result.returncode == 0, result.stdout.decode()
    [ran] = tmp_path.glob("*/hugetlb-2m/result.json")
    assert json.loads(ran.read_text())["runner"] == {"pid": int(pid), "job": 1}


def test_a_restored_lab_reads_its_qemu_into_the_page_cache_after_the_restore(restored):
    """Not in the saved state (a larger state restores slower): the saving lab had no
    .kvmlab/warm, so its late start-up did not read them; /kvmlab/snapshot resume
    starts /kvmlab/warm 2 s after a restore. No QEMU scenario runs on this lab."""
    names, saved = restored
    assert saved["warm_flag"] is False
    resident, pages = l1_cached(names[0], "/usr/bin/qemu-system-aarch64")
    assert pages > 1000 and resident == pages, f"{resident} of {pages} pages of L1's QEMU in its page cache"


def test_restored_labs_draw_different_random_numbers(restored):
    a, b = (guest(name, "head -c 32 /dev/urandom | od -An -tx1; cat /proc/sys/kernel/random/uuid")
            for name in restored[0])
    assert a != b


@pytest.mark.parametrize("kernel", ["bullseye", "bookworm", "sid"])  # trixie's: the tests above
def test_a_snapshot_saves_and_restores_a_working_kvm_host_on_every_debian_kernel(kernel, snap_config, tmp_path):
    name = f"snap-{kernel}"
    try:
        first = kvmlab("up", "--name", name, "-c", str(snap_config), "--kernel", kernel, "--snapshot")
        assert first.returncode == 0, first.stderr.decode()
        assert "booted, snapshot saved" in first.stdout.decode()
        release = guest(name, "uname -r").strip()
        assert kvmlab("down", "--name", name).returncode == 0
        again = kvmlab("up", "--name", name, "-c", str(snap_config), "--kernel", kernel, "--snapshot")
        assert again.returncode == 0, again.stderr.decode()
        assert "restored from its snapshot" in again.stdout.decode()
        assert guest(name, "uname -r").strip() == release
        # The restored L1 runs KVM guests: one scenario, judged on its stage-2 faults.
        result = kvmlab("test", "thp", "-k", "anon-thp-always", "--name", name, "--results", str(tmp_path))
        [summary] = tmp_path.glob("*/summary.json")
        [scenario] = json.loads(summary.read_text())["scenarios"]
        assert (result.returncode, scenario["status"]) == (0, "pass"), scenario["reasons"]
    finally:
        kvmlab("down", "--name", name)


def test_a_damaged_snapshot_is_one_clear_error_and_leaves_no_qemu(snap_config, private_runtime, tmp_path):
    # A snapshot of its own (another machine: one more vCPU), then cut in half.
    config = tmp_path / "lab.yaml"
    config.write_text(snap_config.read_text() + "lab:\n  cpus: 1\n")
    assert kvmlab("up", "--name", "snap-cut", "-c", str(config), "--snapshot").returncode == 0
    vmstate = Path(state(private_runtime, "snap-cut")["snapshot"]["file"])
    kvmlab("down", "--name", "snap-cut")
    try:
        with open(vmstate, "r+b") as f:
            f.truncate(os.path.getsize(vmstate) // 2)
        result = kvmlab("up", "--name", "snap-cut", "-c", str(config), "--snapshot")
        err = result.stderr.decode()
        assert result.returncode == 1
        assert "while restoring the snapshot" in err and "images clean --snapshots" in err
        assert qemu_pids_in(private_runtime / "labs" / "snap-cut") == []
    finally:
        shutil.rmtree(vmstate.parent, ignore_errors=True)


def test_images_clean_snapshots_removes_them(tmp_path, monkeypatch):
    from lab.machine import snapshot

    # A cache of its own: the user's snapshots stay.
    monkeypatch.setenv("KVMLAB_CACHE_DIR", str(tmp_path))
    fake = snapshot.lookup("f" * 24)
    snapshot.prepare(fake)
    (fake.dir / "vmstate").write_bytes(b"x" * 4096)
    result = kvmlab("images", "clean", "--snapshots", env={"KVMLAB_RUNTIME_DIR": str(tmp_path / "rt")})
    assert result.returncode == 0, result.stderr.decode()
    assert not fake.dir.exists()
    assert "Removed the L1 snapshots" in result.stdout.decode()
