"""The default lab, booted for real: exec, cp, status, qmp, and its errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from lab.machine.agent import MAX_LINE
from tests.conftest import kvmlab, l1_cached, qemu_pids_in

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def lab(private_runtime):
    result = kvmlab("up", "--name", "it")
    assert result.returncode == 0, result.stderr.decode()
    yield result.stdout.decode()
    down = kvmlab("down", "--name", "it")
    assert down.returncode == 0, down.stderr.decode()
    assert qemu_pids_in(private_runtime / "labs/it") == []


def test_up_reports_a_kvm_capable_l1(lab):
    # -cpu max gets lpa2=off (lab/machine/qemu.py CPU_DEFAULTS): KVM's IPA limit is 48 bits
    assert "KVM      VHE mode, IPA limit 48 bits, /dev/kvm present" in lab
    assert "THP      always" in lab
    assert "6.12." in lab  # trixie's kernel is the default


def test_exec_streams_output_and_returns_the_status(lab):
    result = kvmlab("exec", "--name", "it", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == b"out\nerr\n"


def test_exec_passes_arguments_unchanged(lab):
    result = kvmlab("exec", "--name", "it", "--", "printf", "%s|", "a b", "$HOME", "'q'", "")
    assert result.returncode == 0
    assert result.stdout == b"a b|$HOME|'q'||"


def test_exec_reads_thp_mode(lab):
    result = kvmlab("exec", "--name", "it", "--", "cat", "/sys/kernel/mm/transparent_hugepage/enabled")
    assert result.stdout == b"[always] madvise never\n"


def test_kvm_device_is_usable(lab):
    # KVM_GET_API_VERSION (0xAE00) on /dev/kvm returns 12 on every kernel since 2.6.22.
    script = ("import fcntl, os; fd = os.open('/dev/kvm', os.O_RDWR); "
              "print(fcntl.ioctl(fd, 0xAE00))")
    result = kvmlab("exec", "--name", "it", "--", "python3", "-c", script)
    assert result.stdout.strip() == b"12", result.stdout


def test_exec_timeout_interrupts_and_the_channel_survives(lab):
    result = kvmlab("exec", "--name", "it", "--timeout", "1", "--", "sleep", "60")
    assert result.returncode == 124
    assert b"--timeout" in result.stderr
    after = kvmlab("exec", "--name", "it", "--", "echo", "next")
    assert after.stdout == b"next\n"


def test_long_scripts_travel_through_the_share(lab):
    word = "x" * (MAX_LINE * 2)
    result = kvmlab("exec", "--name", "it", "--", "sh", "-c", f"echo {word} | wc -c")
    assert result.stdout.strip() == str(len(word) + 1).encode()


def test_cp_16_mb_both_ways(lab, tmp_path):
    data = os.urandom(16 * 2**20)  # the 50 MB of the share throughput: scripts/bench
    src = tmp_path / "blob"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert kvmlab("cp", "--name", "it", str(src), ":/tmp/blob").returncode == 0
    in_l1 = kvmlab("exec", "--name", "it", "--", "sha256sum", "/tmp/blob")
    assert in_l1.stdout.split()[0].decode() == digest
    back = tmp_path / "back"
    assert kvmlab("cp", "--name", "it", ":/tmp/blob", str(back)).returncode == 0
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    kvmlab("exec", "--name", "it", "--", "rm", "/tmp/blob")


def test_cp_into_a_directory_keeps_the_name(lab, tmp_path):
    src = tmp_path / "probe.txt"
    src.write_text("hello\n")
    assert kvmlab("cp", "--name", "it", str(src), ":/root").returncode == 0
    assert kvmlab("exec", "--name", "it", "--", "cat", "/root/probe.txt").stdout == b"hello\n"
    missing = kvmlab("cp", "--name", "it", ":/root/nope", str(tmp_path))
    assert missing.returncode == 1 and b"nope" in missing.stderr


def test_cp_keeps_the_mode_both_ways_but_not_setuid(lab, tmp_path):
    src = tmp_path / "repro"
    src.write_text("#!/bin/sh\necho ran\n")
    src.chmod(0o4750)
    assert kvmlab("cp", "--name", "it", str(src), ":/root/repro").returncode == 0
    ran = kvmlab("exec", "--name", "it", "--", "sh", "-c", "/root/repro && stat -c %a /root/repro")
    assert ran.stdout == b"ran\n750\n"  # executable at once, without the setuid bit
    kvmlab("exec", "--name", "it", "--", "chmod", "4711", "/root/repro")
    back = tmp_path / "back"
    assert kvmlab("cp", "--name", "it", ":/root/repro", str(back)).returncode == 0
    assert stat.S_IMODE(back.stat().st_mode) == 0o711


def test_status_and_qmp(lab):
    status = json.loads(kvmlab("status", "--name", "it", "--json").stdout)
    assert status["up"] is True and status["status"] == "running"
    assert status["kvm_mode"] == "VHE" and status["cpus"] == 2
    reply = json.loads(kvmlab("qmp", "--name", "it", "query-status").stdout)
    assert reply["return"]["running"] is True
    bad = kvmlab("qmp", "--name", "it", "no-such-command")
    assert bad.returncode == 1 and "CommandNotFound" in bad.stdout.decode()


def test_up_of_a_running_name_says_so(lab):
    again = kvmlab("up", "--name", "it")
    assert again.returncode == 1
    assert b"lab 'it' is already up" in again.stderr


def test_lab_directory_is_private(lab, private_runtime):
    lab_dir = private_runtime / "labs/it"
    assert oct(lab_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((private_runtime / "labs").stat().st_mode & 0o777) == "0o700"


def test_sockets_and_logs_are_the_users_alone(lab, private_runtime):
    lab_dir = private_runtime / "labs/it"
    for name in ("qmp.sock", "console.sock", "agent.sock", "console.log", "qemu.pid", "lab.json"):
        assert (lab_dir / name).stat().st_mode & 0o077 == 0, name


def test_console_is_interactive_and_ctrl_bracket_leaves(lab):
    import sys

    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "lab.cli", "console", "--name", "it"], timeout=20)
    child.expect("Ctrl-] leaves")
    child.sendline("echo console-$((40 + 2))")
    child.expect("console-42")
    child.sendcontrol("]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_console_without_a_terminal_is_refused(lab):
    result = kvmlab("console", "--name", "it")
    assert result.returncode == 2
    assert b"needs a terminal" in result.stderr


def test_exec_output_is_byte_exact(lab):
    # Control bytes, NUL, 0xff, and text shaped like the end marker with another token.
    result = kvmlab("exec", "--name", "it", "--", "printf", "a\\036b\\036E fake 0\\n\\000\\377\\r\\nend")
    assert result.returncode == 0
    assert result.stdout == b"a\x1eb\x1eE fake 0\n\x00\xff\r\nend"


PLANT = ("cd \"$KVMLAB_RUN_DIR\" && echo kept > note.txt && ln -s {sentinel} link && mkfifo fifo "
         "&& mknod dev c 1 3 && cp /bin/busybox suid && chmod 4755 suid && echo a > hard && ln hard hard2 "
         "&& truncate -s 5G sparse && : > \"$(printf 'bad\\033name')\"")


def test_what_l1_plants_during_a_run_is_reported_and_not_taken(lab, tmp_path):
    # The kernel under test (or a reproducer) is root in L1: a traced command plants in its
    # run directory in the share each thing the host must not follow or take.
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("the host's own file\n")
    results = tmp_path / "results"
    result = kvmlab("trace", "--name", "it", "--results", str(results), "--", "sh", "-c",
                    PLANT.format(sentinel=sentinel))
    err = result.stderr.decode()
    assert result.returncode == 0, err
    [trace] = results.glob("*/trace")
    refused = (trace / "refused-from-l1.txt").read_text()
    for name, why in [("link", "a symbolic link as L1 made it"), ("fifo", "a FIFO as L1 made it"),
                      ("dev", "a character device as L1 made it"), ("suid", "setuid or setgid in L1"),
                      ("hard", "a hard link"), ("sparse", "5368709120 bytes, over the bound"),
                      ("'bad\\x1bname'", "a name with control characters")]:
        assert f"{name}: {why}" in refused, refused
        assert f"not taken: {name}: {why}" in err
    assert (trace / "note.txt").read_text() == "kept\n"
    for path in [*results.rglob("*"), *results.rglob(".*")]:
        assert path.is_dir() or stat.S_ISREG(path.lstat().st_mode) and not path.lstat().st_mode & 0o6000, path
    assert {p.name for p in trace.iterdir()}.isdisjoint({"link", "fifo", "dev", "suid", "hard", "sparse"})
    assert sentinel.read_text() == "the host's own file\n"


def test_a_device_node_and_a_setuid_file_made_in_l1_are_private_plain_files_on_the_host(lab, private_runtime):
    made = kvmlab("exec", "--name", "it", "--", "sh", "-c",
                  "cd /mnt/share && mknod dev c 1 3 && cp /bin/busybox suid && chmod 4755 suid && ls -l dev suid")
    assert made.returncode == 0, made.stderr.decode()
    assert made.stdout.decode().startswith("crw") and "-rwsr-xr-x" in made.stdout.decode()  # to L1: as made
    host = private_runtime / "labs/it/share"
    try:
        for name in ("dev", "suid"):
            st = (host / name).lstat()
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
        assert (host / "dev").read_bytes() == b""  # not /dev/null's device: nothing to open
    finally:
        kvmlab("exec", "--name", "it", "--", "rm", "-f", "/mnt/share/dev", "/mnt/share/suid")


def test_l1_is_ready_before_its_share_and_the_agent_answers_once_the_share_is_mounted(lab, private_runtime):
    """The ready report comes through the port kvmlab.ready, before the share's modules are
    in (images/l1/rootfs/kvmlab/agent); the agent's shell starts only with the share mounted."""
    report = (private_runtime / "labs/it/share/.kvmlab/ready").read_text()
    values = dict(line.split("=", 1) for line in report.splitlines())
    assert report.index("end=1\n") < report.index("share_uptime=")  # ready first, then the share
    assert float(values["share_uptime"]) >= float(values["uptime"])
    log = (private_runtime / "labs/it/console.log").read_text(errors="replace")
    assert log.index("kvmlab: L1 ready") < log.index("kvmlab: share mounted")
    # the first command (this module's first, or this one) found the share there
    result = kvmlab("exec", "--name", "it", "--", "sh", "-c", "grep -c ' /mnt/share 9p ' /proc/mounts; "
                    "ls /sys/class/virtio-ports/*/name | wc -l")
    assert result.stdout.decode().split() == ["1", "2"]  # hvc0 and kvmlab.ready


def test_l1_starts_its_scenario_runner_once_ready_before_any_scenario(lab, private_runtime):
    # kvmlab up leaves the start command in the share; L1's late start-up runs it
    share = private_runtime / "labs/it/share/.kvmlab"
    key = next(share.glob("tools/.key-*")).name.removeprefix(".key-")
    assert f"/run/kvmlab/tools-{key}" in (share / "runner-start").read_text()
    script = ("for i in $(seq 600); do [ -s /run/kvmlab/runner/pid ] && break; sleep 0.1; done; "
              "read -r pid k _ < /run/kvmlab/runner/pid; echo $k; tr '\\0' ' ' < /proc/$pid/cmdline; echo; "
              # the starter gives the lock back at its next look (every 0.1 s) at the runner
              "for i in $(seq 50); do [ -e /run/kvmlab/start.lock ] || break; sleep 0.1; done; "
              "ls -d /run/kvmlab/start.lock 2>&1 || true")
    result = kvmlab("exec", "--name", "it", "--", "sh", "-c", script, timeout=120)
    said = result.stdout.decode().splitlines()
    assert said[0] == key  # the runner of this kvmlab's tools
    assert "-m l1.runner /run/kvmlab/runner" in said[1]
    assert "No such file" in said[2]  # and the start lock was given back


def test_l1_reads_its_qemu_into_the_page_cache_once_its_runner_has_started(lab, private_runtime):
    """A booted lab that is not saved next: kvmlab up leaves .kvmlab/warm in the share, and
    L1's late start-up runs /kvmlab/warm after the runner's start. (This module runs no
    scenario whose VMM is QEMU: nothing else reads the binary.)"""
    assert (private_runtime / "labs/it/share/.kvmlab/warm").exists()
    cached, pages = l1_cached("it", "/usr/bin/qemu-system-aarch64")
    assert pages > 1000 and cached == pages, f"{cached} of {pages} pages of L1's QEMU in its page cache"


def test_commands_leave_nothing_behind_in_the_share(lab, private_runtime):
    kvmlab_dir = private_runtime / "labs/it/share/.kvmlab"
    for _ in range(3):
        assert kvmlab("exec", "--name", "it", "--", "true").returncode == 0
    # each command's status file, and what QEMU's 9p kept of it (.virtfs_metadata), is gone
    assert not list(kvmlab_dir.glob("status-*")) and not list(kvmlab_dir.glob(".virtfs_metadata/status-*"))
