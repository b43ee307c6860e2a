"""The host reads what L1 left in the share as untrusted (lab/machine/share.py): on hand-made
trees with what QEMU's mapped-file export leaves (.virtfs_metadata) and with real links,
FIFOs, big and sparse files, as a share exported otherwise would hold."""

from __future__ import annotations

import os
import stat

import pytest

from lab.machine import share


def metadata(directory, name, mode):
    (directory / share.METADATA).mkdir(exist_ok=True)
    (directory / share.METADATA / name).write_text(f"virtfs.uid=0\nvirtfs.gid=0\nvirtfs.mode={mode}\n")


@pytest.fixture
def planted(tmp_path):
    root = tmp_path / "share"
    run = root / ".kvmlab" / "runs" / "r"
    run.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret\n")
    (run / "result.json").write_text("{}\n")
    (run / "sub").mkdir()
    (run / "sub" / "inner.txt").write_text("inner\n")
    os.symlink(outside, run / "real-link")  # a share exported with security_model=none
    os.mkfifo(run / "real-fifo")
    (run / "mapped-link").write_text(str(outside))  # what mapped-file makes of L1's symlink
    metadata(run, "mapped-link", stat.S_IFLNK | 0o777)
    (run / "mapped-dev").write_text("")
    metadata(run, "mapped-dev", stat.S_IFCHR | 0o644)
    (run / "mapped-suid").write_bytes(b"\x7fELF")
    metadata(run, "mapped-suid", stat.S_IFREG | stat.S_ISUID | 0o755)
    (run / "plain").write_text("ok\n")
    metadata(run, "plain", stat.S_IFREG | 0o644)
    os.link(run / "plain", run / "hard")
    with open(run / "sparse", "wb") as f:
        f.truncate(8 << 20)
    (run / "bad\x1bname").write_text("")
    return root, outside


def test_import_takes_regular_files_only_and_lists_the_rest(planted, tmp_path):
    root, outside = planted
    dst = tmp_path / "results" / "r"
    taken = share.import_tree(root, ".kvmlab/runs/r", dst, file_limit=1 << 20)
    names = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*"))
    assert names == ["result.json", "sub", "sub/inner.txt"]
    reasons = {line.split(":")[0]: line for line in taken.refused}
    assert "symbolic link on the host" in reasons["real-link"]
    assert "FIFO on the host" in reasons["real-fifo"]
    assert "symbolic link as L1 made it" in reasons["mapped-link"]
    assert "character device as L1 made it" in reasons["mapped-dev"]
    assert "setuid or setgid in L1 (mode 4755)" in reasons["mapped-suid"]
    assert "hard link" in reasons["plain"] and "hard link" in reasons["hard"]
    assert "over the bound" in reasons["sparse"]
    assert any("control characters" in line for line in taken.refused)
    assert not (root / ".kvmlab" / "runs" / "r").exists()  # removed from the share
    assert outside.read_text() == "host secret\n"  # followed by nothing
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in dst.rglob("*") if p.is_file())


def test_a_directory_l1_replaced_with_a_link_is_not_entered(tmp_path):
    root = tmp_path / "share"
    (root / ".kvmlab" / "runs").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_text("not L1's\n")
    os.symlink(elsewhere, root / ".kvmlab" / "runs" / "r")
    taken = share.import_tree(root, ".kvmlab/runs/r", tmp_path / "dst")
    assert "not a directory the host made" in taken.refused[0]
    assert list((tmp_path / "dst").iterdir()) == [] and (elsewhere / "x").exists()
    with pytest.raises(share.Refused, match="not a directory the host made"):
        share.read_bytes(root, ".kvmlab/runs/r/x")


def test_reads_are_bounded_and_refuse_links(tmp_path):
    root = tmp_path / "share"
    (root / ".kvmlab").mkdir(parents=True)
    (root / ".kvmlab" / "ready").write_text("end=1\n")
    assert share.read_text(root, ".kvmlab/ready") == "end=1\n"
    (root / ".kvmlab" / "big").write_bytes(b"x" * 5000)
    with pytest.raises(share.Refused, match="5000 bytes, over the bound of 4096"):
        share.read_bytes(root, ".kvmlab/big", 4096)
    os.symlink("/etc/passwd", root / ".kvmlab" / "status-1")
    with pytest.raises(share.Refused, match="symbolic link on the host"):
        share.read_text(root, ".kvmlab/status-1")
    dst = tmp_path / "copy"
    with pytest.raises(share.Refused):
        share.copy_file(root, ".kvmlab/status-1", dst)
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy")] == []
    share.copy_file(root, ".kvmlab/big", dst)
    assert dst.read_bytes() == b"x" * 5000


def test_the_disk_watch_trips_below_its_floor(tmp_path, monkeypatch):
    free = [10 << 30]
    monkeypatch.setattr(share, "free_bytes", lambda path: free[0])
    watch = share.DiskWatch(tmp_path)
    assert watch.floor == share.FREE_FLOOR and watch.problem() == ""
    free[0] = (1 << 30) - 1
    assert "under the floor of 1024 MiB" in watch.problem() and "9216 MiB written" in watch.problem()
    free[0] = 600 << 20  # a fuller disk to begin with: half of what it had
    assert share.DiskWatch(tmp_path).floor == 300 << 20
    monkeypatch.setenv("KVMLAB_SHARE_FREE_FLOOR", str(100 << 20))
    assert share.DiskWatch(tmp_path).floor == 100 << 20
