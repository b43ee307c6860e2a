"""Fault injection with real processes: QEMU killed, L1 panicking, a guest that hangs,
Ctrl-C, a full or read-only cache, a kvmlab killed mid-command. Each test breaks the
real thing and checks what the user is told, what is kept and that the next command works.
The table of these cases is docs/hardening.md."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import kill_qemus_in, kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot

FAST = """\
description: 8 MiB written under THP always, mapped with blocks
l1: {thp: always}
memslots: [{ipa: 1G, size: 8M, backing: anonymous}]
guest: {access: write}
expect: {regions: [{mapping: block}]}
"""

HANG = """\
description: the guest writes forever and the VMM never ends it
memslots: [{ipa: 1G, size: 8M, backing: anonymous}]
guest: {access: write, forever: true}
timeout: TIMEOUT
"""


def hang(timeout: int) -> str:
    return HANG.replace("TIMEOUT", str(timeout))


def suite(directory: Path, *scenarios: tuple[str, str]) -> Path:
    """A suite directory: (name, YAML) pairs, run in this order."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in scenarios:
        (directory / f"{name}.yaml").write_text(text)
    return directory


def start(*args: str, out: Path) -> subprocess.Popen:
    """A kvmlab command in the background, its output in `out` (stdout and stderr)."""
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], stdout=open(out, "wb"),
                            stderr=subprocess.STDOUT)


def wait_running(lab_dir: Path, scenario: str, proc: subprocess.Popen, settle: float = 1.0) -> None:
    """Until `scenario`'s VMM runs in L1 (L1's runner writes vmm.pid into the run
    directory in the share), then `settle` seconds, so that its vCPUs are faulting."""
    run = lab_dir / "share/.kvmlab/runs" / scenario / "vmm.pid"
    deadline = time.monotonic() + 180
    while not run.exists():
        assert proc.poll() is None, f"kvmlab ended before {scenario} started"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(settle)


def summary_of(results: Path) -> dict:
    [path] = results.glob("*/summary.json")
    return json.loads(path.read_text())


def by_name(summary: dict) -> dict[str, dict]:
    return {s["name"]: s for s in summary["scenarios"]}


def l1(name: str, script: str) -> str:
    result = kvmlab("exec", "--name", name, "--", "sh", "-c", script, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


#: What L1 must look like after any interrupted scenario: no VMM and no scenario process
#: (no python3 but the resident runner), khugepaged back to its default, no tracepoint
#: left enabled.
L1_CLEAN = ("r=$(cut -d' ' -f1 /run/kvmlab/runner/pid 2>/dev/null); "
            "ps -o pid,comm | awk -v r=\"$r\" '$2 == \"python3\" && $1 != r' | grep -c . || true; "
            "cat /sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs; "
            "grep -c . /sys/kernel/tracing/set_event || true")


def test_qemu_killed_mid_scenario_reports_the_lab_died_and_keeps_what_ran(tmp_path, private_runtime):
    name = "f-killed"
    lab_dir = private_runtime / "labs" / name
    targets = suite(tmp_path / "suite", ("a-fast", FAST), ("b-hang", hang(120)), ("c-never-run", FAST))
    assert kvmlab("up", "--name", name).returncode == 0
    pid = json.loads((lab_dir / "lab.json").read_text())["pid"]
    out = tmp_path / "out.txt"
    proc = start("test", "--name", name, str(targets), "--results", str(tmp_path / "results"), out=out)
    wait_running(lab_dir, "b-hang", proc)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    text = out.read_text()
    assert proc.returncode == 1, text
    assert "the lab died: L0 QEMU" in text and "last lines of the L1 console" in text
    last_line = (lab_dir / "console.log").read_text(errors="replace").replace("\r", "").strip().splitlines()[-1]
    assert last_line.strip() in text  # the tail is the console's own last lines
    assert "The lab died during b-hang; not run: c-never-run" in text

    summary = summary_of(tmp_path / "results")
    runs = by_name(summary)
    assert [s["name"] for s in summary["scenarios"]] == ["a-fast", "b-hang", "c-never-run"]
    assert runs["a-fast"]["status"] == "pass" and runs["a-fast"]["observed"].startswith("4 block")
    assert runs["b-hang"]["status"] == "error" and runs["b-hang"]["reasons"][0].startswith("the lab died")
    assert runs["c-never-run"]["status"] == "error"
    assert runs["c-never-run"]["reasons"] == ["not run: the lab died during b-hang"]
    assert summary["lab_died"]["during"] == "b-hang" and summary["lab_died"]["not_run"] == ["c-never-run"]
    # What ran before is all there: the passing scenario's trace and verdict.
    kept = Path(runs["a-fast"]["artefacts"])
    assert (kept / "verdict.json").exists() and (kept / "trace.raw").stat().st_size > 0
    assert kvmlab("report", str(Path(runs["a-fast"]["artefacts"]).parent)).returncode == 1  # renders; not a pass

    status = kvmlab("status", "--name", name)
    assert status.returncode == 1 and b"down" in status.stdout
    assert qemu_pids_in(lab_dir) == []
    assert kvmlab("up", "--name", name).returncode == 0
    assert kvmlab("down", "--name", name).returncode == 0


def sysrq_crash(console_socket: Path) -> None:
    """`echo c > /proc/sysrq-trigger` typed into L1's serial console shell."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console_socket))
        sock.sendall(b"\necho c > /proc/sysrq-trigger\n")
        time.sleep(0.2)


@pytest.mark.parametrize("append", ["", "panic=0"], ids=["panic-reboots", "panic-hangs"])
def test_l1_panic_is_detected_in_seconds_with_its_excerpt(append, tmp_path, private_runtime):
    """panic=-1 (kvmlab's default) ends QEMU at once; with panic=0 L1 hangs in its panic
    while QEMU runs on, and kvmlab notices it in the console log and stops the lab."""
    name = "f-panic" + ("-hangs" if append else "")
    lab_dir = private_runtime / "labs" / name
    config = tmp_path / "lab.yaml"
    config.write_text(f"lab: {{name: {name}}}\nqemu: {{append: '{append}'}}\n")
    assert kvmlab("up", "--config", str(config)).returncode == 0
    targets = suite(tmp_path / "suite", ("hang", hang(300)))
    out = tmp_path / "out.txt"
    proc = start("test", "--name", name, str(targets), "--results", str(tmp_path / "results"), out=out)
    wait_running(lab_dir, "hang", proc)
    crashed = time.monotonic()
    sysrq_crash(lab_dir / "console.sock")
    proc.wait(timeout=300)
    detected = time.monotonic() - crashed
    text = out.read_text()
    assert proc.returncode == 1, text
    [run] = summary_of(tmp_path / "results")["scenarios"]
    assert run["status"] == "error"
    assert run["reasons"][0].startswith("the lab died") and "L1 log: Kernel panic: sysrq triggered crash" in run["reasons"][0]
    excerpt = next(r for r in run["reasons"] if r.startswith("L1's crash report:"))
    assert "Kernel panic - not syncing: sysrq triggered crash" in excerpt and "sysrq_handle_crash" in excerpt
    if append:
        assert "was stopped by kvmlab: L1 had panicked" in run["reasons"][0]
    # Seen from the panic itself, not from the scenario's 300 s timeout.
    print(f"panic detected {detected:.1f} s after the trigger")
    assert detected < 60
    assert qemu_pids_in(lab_dir) == []
    assert kvmlab("status", "--name", name).returncode == 1


@pytest.fixture(scope="module")
def shared_lab(private_runtime):
    """One lab for the faults a lab survives (a hung or crashed VMM, a killed kvmlab, a
    stretched timeout): each test checks that L1 is clean after it, so the next starts
    from a clean L1 as it would from a fresh one."""
    name = "f-shared"
    assert kvmlab("up", "--name", name).returncode == 0
    try:
        yield name
    finally:
        kvmlab("down", "--name", name)
    assert qemu_pids_in(private_runtime / "labs" / name) == []


def test_a_hung_guest_times_out_and_the_suite_goes_on(shared_lab, tmp_path, private_runtime):
    name = shared_lab
    targets = suite(tmp_path / "suite", ("a-hang", hang(5)), ("b-fast", FAST))
    result = kvmlab("test", "--name", name, str(targets), "--results", str(tmp_path / "results"))
    assert result.returncode == 1, result.stdout.decode()
    runs = by_name(summary_of(tmp_path / "results"))
    assert runs["a-hang"]["status"] == "error"
    assert runs["a-hang"]["reasons"][0] == ("timed out: the VMM was still running after 5 s "
                                            "(the scenario's timeout), killed with SIGKILL")
    assert runs["b-fast"]["status"] == "pass"
    assert runner_of(runs["a-hang"]) == runner_of(runs["b-fast"])  # the runner lived on
    assert l1(name, L1_CLEAN).split() == ["0", "10000", "0"]


def runner_of(scenario: dict) -> int:
    """The pid of L1's resident runner that ran the scenario (from its result.json)."""
    return json.loads((Path(scenario["artefacts"]) / "result.json").read_text())["runner"]["pid"]


CRASH = """\
description: the probe VMM dereferences NULL at the guest's first pause (a planted crash)
memslots: [{ipa: 1G, size: 8M, backing: anonymous}]
guest: {access: [write, write], pauses: [1]}
actions: [{at: pause 1, do: segfault}]
"""


def test_a_crashed_vmm_is_reported_with_its_evidence_and_run_once_more(shared_lab, tmp_path, private_runtime):
    """A VMM that dies of a signal: the report names the signal, how far it got, keeps
    every thread's stack (faulthandler, vmm-fault.log) and runs the scenario once more,
    explicitly; the verdict stays ERROR."""
    name = shared_lab
    targets = suite(tmp_path / "suite", ("a-crash", CRASH), ("b-fast", FAST))
    result = kvmlab("test", "--name", name, str(targets), "--results", str(tmp_path / "results"))
    assert result.returncode == 1, result.stdout.decode()
    runs = by_name(summary_of(tmp_path / "results"))
    crash = runs["a-crash"]
    assert crash["status"] == "error"
    assert crash["reasons"][0].startswith("the VMM failed: died of signal 11 (SIGSEGV) after "), crash["reasons"]
    assert "stage-2 faults (the last in phase 0)" in crash["reasons"][0]
    stacks = crash["reasons"][1]
    assert stacks.startswith("the VMM's stacks when it died (vmm-fault.log):\nFatal Python error: Segmentation")
    assert "in do" in stacks and "probe.py" in stacks  # the frame that dereferenced NULL
    assert crash["reasons"][-1].startswith("run once more (a-crash/rerun; the verdict stays ERROR): ERROR")
    artefacts = Path(crash["artefacts"])
    assert "Segmentation fault" in (artefacts / "vmm-fault.log").read_text()
    assert (artefacts / "rerun" / "vmm-fault.log").exists()
    assert runs["b-fast"]["status"] == "pass"  # the lab goes on
    assert runner_of(crash) == runner_of(runs["b-fast"])  # and so does L1's runner
    assert l1(name, L1_CLEAN).split() == ["0", "10000", "0"]


def test_a_runner_killed_mid_scenario_is_an_error_and_the_next_scenario_gets_a_new_one(shared_lab, tmp_path):
    """L1's resident runner dies (SIGKILL) while its scenario runs: the scenario unwinds
    (its VMM killed, L1's settings back), is reported as an error naming the runner, and
    the next scenario starts a new runner and passes."""
    name = shared_lab
    first = kvmlab("test", "--name", name, str(suite(tmp_path / "warm", ("fast", FAST))),
                   "--results", str(tmp_path / "warm-results"))
    assert first.returncode == 0, first.stdout.decode()
    old = runner_of(by_name(summary_of(tmp_path / "warm-results"))["fast"])
    killed = kvmlab("trace", "--name", name, "--results", str(tmp_path / "trace"), "--",
                    "sh", "-c", "kill -9 $(cut -d' ' -f1 /run/kvmlab/runner/pid); exec sleep 60", timeout=120)
    said = (killed.stdout + killed.stderr).decode()
    assert killed.returncode == 1, said
    assert f"L1's scenario runner (pid {old}) died during this scenario" in said
    assert l1(name, L1_CLEAN).split() == ["0", "10000", "0"]  # sleep and its scenario process: gone
    again = kvmlab("test", "--name", name, str(suite(tmp_path / "again", ("fast", FAST))),
                   "--results", str(tmp_path / "again-results"))
    assert again.returncode == 0, again.stdout.decode()
    new = runner_of(by_name(summary_of(tmp_path / "again-results"))["fast"])
    assert new != old


@pytest.mark.parametrize("lab_was_up", [True, False], ids=["on-a-running-lab", "lab-started-by-test"])
def test_ctrl_c_during_test_stops_cleanly_and_the_next_run_works(lab_was_up, tmp_path, private_runtime):
    name = "f-ctrlc-" + ("up" if lab_was_up else "own")
    lab_dir = private_runtime / "labs" / name
    targets = suite(tmp_path / "suite", ("a-fast", FAST), ("b-hang", hang(300)))
    if lab_was_up:
        assert kvmlab("up", "--name", name).returncode == 0
    out = tmp_path / "out.txt"
    proc = start("test", "--name", name, str(targets), "--results", str(tmp_path / "results"), out=out)
    wait_running(lab_dir, "b-hang", proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130, out.read_text()
    assert "kvmlab: interrupted" in out.read_text()
    # What finished is saved.
    assert by_name(summary_of(tmp_path / "results"))["a-fast"]["status"] == "pass"
    try:
        if lab_was_up:
            # The lab stays up; in L1 the VMM is gone, tracing off, khugepaged back to its default.
            assert qemu_pids_in(lab_dir)
            assert l1(name, L1_CLEAN).split() == ["0", "10000", "0"]
        else:
            # The lab this run brought up is down again.
            assert qemu_pids_in(lab_dir) == []
            assert not (lab_dir / "lab.json").exists()
        again = kvmlab("test", "--name", name, str(targets / "a-fast.yaml"), "--results", str(tmp_path / "again"))
        assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    finally:
        kvmlab("down", "--name", name)
    assert qemu_pids_in(lab_dir) == []


def test_a_killed_kvmlab_test_is_cleaned_up_by_the_next_command(shared_lab, tmp_path, private_runtime):
    """SIGKILL leaves no chance to clean: the scenario goes on in L1 and holds the
    command channel. The next command finds its owner gone and stops it."""
    name = shared_lab
    lab_dir = private_runtime / "labs" / name
    targets = suite(tmp_path / "suite", ("hang", hang(300)))
    proc = start("test", "--name", name, str(targets), "--results", str(tmp_path / "results"),
                 out=tmp_path / "out.txt")
    wait_running(lab_dir, "hang", proc)
    proc.kill()
    proc.wait()
    started = time.monotonic()
    result = kvmlab("exec", "--name", name, "--", "sh", "-c", L1_CLEAN)
    took = time.monotonic() - started
    assert result.returncode == 0
    assert b"a command of a kvmlab that was killed" in result.stderr
    assert result.stdout.decode().split() == ["0", "10000", "0"]
    print(f"the next command ran after {took:.1f} s")
    assert took < 60  # not after the orphan's own 300 s timeout
    assert not list((lab_dir / "share/.kvmlab").glob("owner-*"))
    assert not list((lab_dir / "share/.kvmlab").glob("cancel-*"))


#: `kvmlab up` killed (SIGKILL) just after it started QEMU: in the middle of copying the
#: tools into the share, the first thing it does while L1 boots.
KILLED_AFTER_THE_START = """
import os, signal, sys
from lab.machine import l1runner
from lab.machine.lab import Lab
from lab.cli.base import lab_config
l1runner.start_early = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
Lab(sys.argv[1]).up(lab_config(None, name=sys.argv[1]))
"""


def test_a_qemu_started_by_an_up_killed_at_once_is_stopped_by_the_next_command(private_runtime):
    name = "f-orphan-early"
    lab_dir = private_runtime / "labs" / name
    try:
        killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_START, name], capture_output=True,
                                timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        [orphan] = qemu_pids_in(lab_dir)
        status = kvmlab("status", "--name", name)
        assert f"QEMU (pid {orphan}) left starting by a kvmlab that was killed: stopped".encode() in status.stdout
        assert qemu_pids_in(lab_dir) == []
    finally:
        kill_qemus_in(lab_dir)


def test_a_qemu_left_starting_by_a_killed_up_is_stopped_by_the_next_command(private_runtime):
    name = "f-orphan"
    lab_dir = private_runtime / "labs" / name
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "up", "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not qemu_pids_in(lab_dir):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no unwinding, the QEMU it started runs on
    proc.wait()
    [orphan] = qemu_pids_in(lab_dir)
    status = kvmlab("status", "--name", name)
    assert status.returncode == 1
    assert f"QEMU (pid {orphan}) left starting by a kvmlab that was killed: stopped".encode() in status.stdout
    assert qemu_pids_in(lab_dir) == []
    assert not (lab_dir / "lab.json").exists() and not list(lab_dir.glob("*.sock"))
    assert kvmlab("up", "--name", name).returncode == 0
    assert kvmlab("down", "--name", name).returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A 20 MiB tmpfs (root only: mount(2)); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for d in ("images", "tmp") if (cache / d).is_dir() for p in (cache / d).iterdir())


def test_a_full_or_read_only_cache_is_one_clear_line_and_holds_no_broken_entry(small_fs):
    cache = small_fs / "cache"
    env = {"KVMLAB_CACHE_DIR": str(cache)}
    full = kvmlab("-q", "images", "build", "--kernel", "bookworm", env=env)
    err = full.stderr.decode().strip()
    assert full.returncode == 1, err
    assert len(err.splitlines()) == 1, err
    assert f"the image cache {cache} is full (No space left on device)" in err
    assert "the cache holds no partial entry" in err and "KVMLAB_CACHE_DIR" in err
    assert cache_entries(cache) == []

    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    read_only = kvmlab("-q", "images", "build", "--kernel", "bookworm", env=env)
    err = read_only.stderr.decode().strip()
    assert read_only.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"the image cache {cache} is not writable (Read-only file system" in err
    assert cache_entries(cache) == []


def test_a_read_only_cache_that_holds_the_images_still_serves_up(tmp_path, private_runtime):
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    from lab.core.paths import cache_dir

    assert kvmlab("images", "build", "--no-l2-kernel").returncode == 0  # the default images, cached
    view = tmp_path / "ro-cache"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(cache_dir()), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        env = {"KVMLAB_CACHE_DIR": str(view)}
        up = kvmlab("up", "--name", "f-ro-cache", env=env)
        assert up.returncode == 0, up.stderr.decode()
        assert kvmlab("down", "--name", "f-ro-cache").returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


BUSY = """\
description: the guest writes forever while a VMM thread drops its memory again and again, so it faults all along
memslots: [{ipa: 1G, size: 8M, backing: anonymous}]
guest: {access: write, forever: true}
actions: [{at: start, do: churn, slot: 1, op: madvise, advice: dontneed, size: 2M, every: 4M}]
timeout: 4
"""


def test_a_vmm_still_faulting_at_its_timeout_gets_more_time_and_the_timeout_says_so(shared_lab, tmp_path, private_runtime):
    """A slow machine must not turn a run that is getting on into a timeout: at its timeout
    the VMM still faulting is given more time, up to 3x; the message names what moved.
    One that stopped moving is killed at its timeout (the hung guest above)."""
    name = shared_lab
    targets = suite(tmp_path / "suite", ("a-busy", BUSY))
    result = kvmlab("test", "--name", name, str(targets), "--results", str(tmp_path / "results"))
    assert result.returncode == 1, result.stdout.decode()
    busy = by_name(summary_of(tmp_path / "results"))["a-busy"]
    assert busy["status"] == "error"
    assert busy["reasons"][0] == ("timed out: the VMM was still running after 12 s (the scenario's timeout "
                                  "of 4 s, stretched while stage-2 faults still advanced; stage-2 faults still "
                                  "advancing at 3x), killed with SIGKILL"), busy["reasons"]
    assert l1(name, L1_CLEAN).split() == ["0", "10000", "0"]


def test_l1_filling_the_hosts_disk_through_the_share_stops_the_lab(tmp_path):
    """9p has no quota: the share's file system is watched while a command runs. Here the
    runtime directory (and so the share) is a 160 MiB tmpfs with a 64 MiB floor."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    runtime = tmp_path / "rt"
    runtime.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "tmpfs", str(runtime)], check=True)
    env = {"KVMLAB_RUNTIME_DIR": str(runtime), "KVMLAB_SHARE_FREE_FLOOR": str(64 << 20)}
    try:
        assert kvmlab("up", "--name", "fill", env=env).returncode == 0
        fill = kvmlab("exec", "--name", "fill", "--", "dd", "if=/dev/zero", "of=/mnt/share/fill", "bs=1M",
                      "count=1000", env=env, timeout=300)
        err = fill.stderr.decode()
        assert fill.returncode == 1 and "L1 filled the host's disk through the share" in err, err
        assert "the lab was stopped" in err
        assert qemu_pids_in(runtime / "labs/fill") == []
        assert os.statvfs(runtime).f_bavail * os.statvfs(runtime).f_frsize > 32 << 20  # stopped well before full
    finally:
        kvmlab("down", "--name", "fill", env=env)
        subprocess.run(["umount", "-l", str(runtime)], check=False)
