"""Security: a lab's state is the user's alone, nothing listens on the network unless asked
(and then on loopback), package signatures are checked, config paths are resolved."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def inet_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(protocol, local address, state) of every IPv4/IPv6 socket process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((proto, fields[1], fields[3]))
    return found


def test_state_is_private_and_nothing_listens_on_the_network(private_runtime):
    name = "sec-default"
    assert kvmlab("up", "--name", name).returncode == 0
    try:
        lab_dir = private_runtime / "labs" / name
        for directory in (private_runtime, private_runtime / "labs", lab_dir, lab_dir / "share"):
            assert mode(directory) == 0o700, directory
            assert directory.stat().st_uid == os.getuid()
        for sock in ("qmp.sock", "console.sock", "agent.sock"):
            assert stat.S_ISSOCK((lab_dir / sock).lstat().st_mode)
            assert mode(lab_dir / sock) == 0o600, sock
        for file in ("lab.json", "console.log", "qemu.log", "qemu.pid", "initrd.cpio"):
            assert mode(lab_dir / file) == 0o600, file
        [pid] = qemu_pids_in(lab_dir)
        assert inet_sockets(pid) == []  # QMP, console and agent are unix sockets only
    finally:
        kvmlab("down", "--name", name)


def test_the_optional_gdb_stub_listens_on_loopback_only(private_runtime):
    import socket

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = "sec-gdb"
    up = kvmlab("up", "--name", name, "--gdb", str(port))
    assert up.returncode == 0, up.stderr.decode()
    try:
        assert f"target remote 127.0.0.1:{port}".encode() in up.stdout
        [pid] = qemu_pids_in(private_runtime / "labs" / name)
        listening = [(proto, local) for proto, local, state in inet_sockets(pid) if state == "0A"]  # TCP_LISTEN
        assert listening == [("tcp", f"0100007F:{port:04X}")]  # 127.0.0.1, little-endian hex
        # It is a gdb stub: asked why the target stopped ("?"), it answers a stop reply.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as gdb:
            gdb.sendall(b"$?#3f")
            reply = b""
            while b"#" not in reply:
                reply += gdb.recv(64)
            assert reply.lstrip(b"+").startswith((b"$T", b"$S")), reply
    finally:
        kvmlab("down", "--name", name)


@pytest.fixture
def nobody_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a directory another user owns needs root (CI runs as root)")

    def make(path: Path) -> Path:
        path.mkdir(parents=True, mode=0o700)
        os.chown(path, 65534, 65534)
        return path
    return make


def test_a_lab_directory_owned_by_another_user_is_refused(tmp_path, nobody_dir):
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    (runtime / "labs").mkdir(mode=0o700)
    theirs = nobody_dir(runtime / "labs" / "victim")
    env = {"KVMLAB_RUNTIME_DIR": str(runtime)}
    result = kvmlab("up", "--name", "victim", env=env)
    err = result.stderr.decode().strip()
    assert result.returncode == 2, err
    assert err == (f"kvmlab: error: {theirs}: owned by uid 65534, not by you (uid {os.getuid()}); "
                   "set KVMLAB_RUNTIME_DIR to a directory of your own")
    assert list(theirs.iterdir()) == [] and qemu_pids_in(theirs) == []
    # The runtime directory itself, owned by another user: refused before anything is made in it.
    other_runtime = nobody_dir(tmp_path / "rt-theirs")
    result = kvmlab("up", "--name", "x", env={"KVMLAB_RUNTIME_DIR": str(other_runtime)})
    assert result.returncode == 2 and b"owned by uid 65534" in result.stderr
    assert list(other_runtime.iterdir()) == []


def test_a_symlink_in_place_of_the_lab_directory_is_refused(tmp_path):
    runtime = tmp_path / "rt"
    (runtime / "labs").mkdir(parents=True, mode=0o700)
    os.chmod(runtime, 0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runtime / "labs" / "linked").symlink_to(elsewhere)
    result = kvmlab("up", "--name", "linked", env={"KVMLAB_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 2, result.stderr.decode()
    assert b"not a directory" in result.stderr
    assert list(elsewhere.iterdir()) == []


def unsigned_mirror(root: Path) -> Path:
    """A Debian archive whose Release file has no signature (no InRelease, no Release.gpg)."""
    binary = root / "dists/trixie/main/binary-arm64"
    binary.mkdir(parents=True)
    (binary / "Packages").write_bytes(b"")
    digest = hashlib.sha256(b"").hexdigest()
    (root / "dists/trixie/Release").write_text(
        "Origin: Debian\nLabel: Debian\nSuite: trixie\nCodename: trixie\nArchitectures: arm64\nComponents: main\n"
        f"Date: Tue, 24 Nov 2026 00:00:00 UTC\nSHA256:\n {digest} 0 main/binary-arm64/Packages\n")
    return root


def test_an_unsigned_package_archive_is_refused(tmp_path):
    mirror = unsigned_mirror(tmp_path / "mirror")
    cache = tmp_path / "cache"
    result = kvmlab("-q", "images", "build", env={"KVMLAB_MIRROR": mirror.as_uri(), "KVMLAB_CACHE_DIR": str(cache)})
    err = result.stderr.decode()
    assert result.returncode == 1, err
    first = err.splitlines()[0]
    assert first.startswith("kvmlab: error: the package archive for trixie failed apt's signature check (")
    assert "is not signed" in first and "kvmlab never turns signature checks off" in first
    assert not cache.exists()  # nothing cached from it


def test_no_download_path_turns_signature_checks_off():
    """What the archive fetch runs: apt's signature checks are never relaxed."""
    source = (Path(__file__).parents[2] / "lab/builder/debian.py").read_text()
    for insecure in ("trusted=yes", "AllowUnauthenticated", "allow-unauthenticated", "AllowInsecureRepositories",
                     "--no-check-gpg", "check-gpg=false", "--keyring=/dev/null"):
        assert insecure not in source


def test_config_paths_are_resolved_from_the_config_file(tmp_path):
    """A relative kernel, modules or qemu binary path in a config is taken from the file's
    folder, resolved (symlinks followed) and checked before anything starts."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "Image").write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 64)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "link").symlink_to(real)
    config = tmp_path / "cfg" / "lab.yaml"
    config.write_text("lab:\n  kernel: link/Image\nqemu:\n  binary: ../bin/qemu\n")
    code = ("import json, sys; from lab.config import load_config; c = load_config(sys.argv[1]); "
            "print(json.dumps([c.kernel, c.qemu_binary]))")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [str(real / "Image"), str(tmp_path / "bin" / "qemu")]
