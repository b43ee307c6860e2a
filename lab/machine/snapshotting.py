"""The steps of `up --snapshot`: saving the L1 that just became ready (QMP migration to a
file), and restoring a saved one (`-incoming`), then mending what a restore must: the
share, the clock and the CRNG (images/l1/rootfs/kvmlab/snapshot)."""

from __future__ import annotations

import fcntl
import re
import secrets
import shlex
import time
from typing import Any

from lab.config import LabConfig
from lab.core.errors import LabError, LaunchError
from lab.core.progress import Progress
from lab.machine import snapshot as snapshots
from lab.machine.agent import GUEST_SHARE, Agent
from lab.machine.boot import ReadyInfo, private_sockets, wait_flags
from lab.machine.logs import detail, read_from, size_of
from lab.machine.qemu import L0Process, LabPaths


def _share_gone(paths: LabPaths, mark: int, timeout: float) -> str:
    """'unmounted' once L1's console says the share went for the snapshot (images/l1/rootfs/
    kvmlab/snapshot unmounts it just after the save command), else what happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read_from(paths.console_log, mark)
        if "kvmlab: share unmounted for a snapshot" in text:
            return "unmounted"
        if "kvmlab: share busy in L1" in text:
            return "is busy in L1: a process there holds a file or its directory"
        time.sleep(0.05)
    raise LabError(f"L1 did not unmount the share for the snapshot within {timeout:g} s; see the console log "
                   f"{paths.console_log}")


def monitor(paths: LabPaths, timeout: float = 10.0) -> Any:
    """QMP while `up` still holds the lab (not yet ready, so not through `Lab.qmp()`)."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    mon = QEMUMonitorProtocol(str(paths.qmp))
    mon.connect()
    mon.settimeout(timeout)
    return mon


def save(paths: LabPaths, l0: L0Process, snap: snapshots.Snapshot, ready: ReadyInfo, progress: Progress) -> bool:
    """Saves the L1 that just became ready, then lets it run on. False: not saved (another
    kvmlab is saving it, or QEMU could not; the lab is up all the same)."""
    tmp = snapshots.prepare(snap)
    lock = open(snap.dir / ".lock", "w")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if snap.exists():
            return False
        # Late start-up (optional modules, power button) is over, or the state would
        # freeze it half done.
        flag = wait_flags(paths, l0.pid, 10.0)
        mark = size_of(paths.console_log)
        status, output = Agent(paths).run_capture("/kvmlab/snapshot save", timeout=30)
        if status != 0:
            progress.note(f"the snapshot was not saved (L1: {output.strip()}); the lab runs on, booted")
            return False
        unmounted = _share_gone(paths, mark, 30.0)
        if unmounted != "unmounted":
            progress.note(f"the snapshot was not saved (the share {unmounted}); the lab runs on, booted")
            return False
        saved = False
        mon = monitor(paths, timeout=30)
        try:
            mon.cmd("stop")
            # QEMU's default migration bandwidth (32 MiB/s) is for live networks; a file takes all.
            mon.cmd_raw("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            reply = mon.cmd_raw("migrate", {"uri": f"exec:cat > {shlex.quote(str(tmp))}"})
            if "error" in reply:
                raise LabError(f"QEMU refused: {reply['error'].get('desc')}")
            deadline = time.monotonic() + 300
            while True:
                info = mon.cmd_raw("query-migrate").get("return", {})
                if info.get("status") == "completed":
                    break
                if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise LabError(info.get("error-desc", info.get("status", "timed out")))
                time.sleep(0.05)
            snapshots.commit(snap, tmp, {"ready": ready.as_dict(), "flag": flag, "inputs": snap.inputs})
            saved = True
        except (LabError, OSError) as exc:
            # The lab itself is fine: it runs on, booted; the next `up --snapshot` tries again.
            progress.note(f"the snapshot was not saved ({exc}); the lab runs on, booted")
        finally:
            tmp.unlink(missing_ok=True)
            try:
                mon.cmd("cont")
            finally:
                mon.close()
        resume(paths)
        return saved
    finally:
        lock.close()


def resume(paths: LabPaths) -> float:
    """After a restore (or a save): the share, the clock, a reseeded CRNG. Returns L1's uptime."""
    command = f"/kvmlab/snapshot resume {time.time_ns()} {secrets.token_hex(64)}"

    def direct(token: str, seconds: int, script: str) -> str:
        # Typed straight into the agent's shell, framed as /kvmlab/run frames it, its status
        # left in the share as /kvmlab/run leaves it (the host's fallback should the end
        # marker be lost): through /kvmlab/run (its decoding, session and watchdog) it took
        # 40-55 ms more.
        return (f"printf '\\036B %s\\n' {token}; {command} </dev/null 2>&1; rc=$?; "
                f"echo $rc 2>/dev/null > {GUEST_SHARE}/.kvmlab/status-{token}; printf '\\036E %s %d\\n' {token} $rc")

    status, output = Agent(paths).run_capture(command, timeout=30, via=direct)
    if status != 0:
        raise LaunchError(f"L1 did not resume after its snapshot: {output.strip()}", command=[])
    match = re.search(r"uptime=([\d.]+)", output)
    return float(match.group(1)) if match else 0.0


def restore(paths: LabPaths, l0: L0Process, config: LabConfig, started: float,
            snap: snapshots.Snapshot) -> ReadyInfo:
    """Waits for QEMU to load the snapshot and run it, then resumes L1."""
    meta = snap.meta() or {}
    deadline = started + config.boot_timeout
    mon = None
    try:
        while True:
            code = l0.exit_code()
            if code is not None:
                raise LaunchError(
                    f"QEMU exited with status {code} while restoring the snapshot {snap.dir}; "
                    "`kvmlab images clean --snapshots` removes it, and the next `up --snapshot` saves anew",
                    command=l0.command, exit_code=code, detail=detail(paths, qemu_output=True))
            if time.monotonic() > deadline:
                raise LaunchError(f"L1 was not restored after {config.boot_timeout:g} s (lab.boot_timeout)",
                                  command=l0.command, detail=detail(paths, qemu_output=True))
            try:
                if mon is None and paths.qmp.exists():
                    mon = monitor(paths, timeout=5)
                if mon is not None:
                    run_state = mon.cmd_raw("query-status").get("return", {}).get("status")
                    if run_state == "running":
                        break
                    if run_state == "paused":  # loaded; it was saved stopped
                        mon.cmd_raw("cont")
            except Exception:  # QMP not listening yet, or QEMU on its way out (seen above)
                mon = None
            time.sleep(0.01)
    finally:
        if mon is not None:
            mon.close()
    private_sockets(paths)
    uptime = resume(paths)
    if meta.get("flag"):
        (paths.share / ".kvmlab" / meta["flag"]).touch()
    saved = meta.get("ready", {})
    return ReadyInfo(release=saved.get("release", "?"), kvm_device=saved.get("kvm_device", False),
                     kvm_mode=saved.get("kvm_mode", ""), kvm_log=saved.get("kvm_log", []),
                     thp=saved.get("thp", ""), seconds=round(time.monotonic() - started, 2),
                     guest_uptime=uptime)
