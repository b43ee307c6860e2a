"""Which of several labs running at once is served first by the host's CPUs.

Two labs on two host CPUs overcommit them: a lab's QEMU runs a thread per L1 vCPU, and
keeps about one host CPU busy on average, both at its peaks. Under TCG an L1 vCPU that waits
for its sibling (a lock its preempted thread holds, a call across CPUs) spins, since
multi-threaded TCG runs WFE as a no-op, so an overcommitted lab does more work, not only
slower. Measured on 2 CPUs (2026-12-05): a bookworm thp suite's vCPU threads used 24 s of
CPU alone, 45 s beside a second lab, 39 s beside two busy loops.

So the first lab to start that is still running is in the foreground (nice 0) and the
others in the background (nice 19). The foreground runs almost as if alone, and the
background takes the CPU time it leaves. The 4-kernel thp matrix took 77-83 s this way
(six runs), against 98-99 s with all labs equal, with the same cells. A background lab's vCPUs are
preempted more often. That is a scheduling difference, not a different kernel, but where a
kernel's fault handling is sensitive to it (5.10 retries a fault during any invalidation in
the VMM's mm) its counts move: bullseye's l2-linux-thp took 10-13 faults with THP always in
the background, against 10 otherwise.

QEMU runs in a session of its own (lab/machine/qemu.py). With the kernel's autogroups
(sched_autogroup_enabled), its share of the CPUs is its autogroup's nice, in
/proc/PID/autogroup: any user may set 0 to 19 there for their own processes, at most every
0.1 s unless privileged. Each of its threads' nice is set too, for hosts where cgroups take
the place of autogroups. There, a user without CAP_SYS_NICE cannot bring a thread back to 0,
so that lab stays in the background, as all labs were before.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

FOREGROUND = 0
BACKGROUND = 19


def autogroup(pid: int | str) -> str:
    """'/autogroup-N' of a process, or '' (no autogroups, or it is gone)."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return ""


def set_nice(pid: int, nice: int) -> None:
    """Give process `pid` (and every thread it has) the CPU share of `nice`: its autogroup's
    nice when it has an autogroup of its own, and its threads' nice. Quiet if it is gone
    or a step is not allowed."""
    group = autogroup(pid)
    if group and group != autogroup("self"):
        for _ in range(5):
            try:
                Path(f"/proc/{pid}/autogroup").write_text(str(nice))
                break
            except OSError as exc:
                if exc.errno != errno.EAGAIN:  # EAGAIN: another change in the last 0.1 s
                    break
                time.sleep(0.11)
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except OSError:
            pass


class Precedence:
    """Labs' QEMUs in the order they entered: the first still in is in the foreground,
    the others in the background. Thread-safe."""

    def __init__(self) -> None:
        self._pids: list[int] = []
        self._lock = threading.Lock()

    def enter(self, pid: int | None) -> None:
        if pid is None:
            return
        with self._lock:
            self._pids.append(pid)
            set_nice(pid, FOREGROUND if self._pids[0] == pid else BACKGROUND)

    def leave(self, pid: int | None) -> None:
        """`pid` is done (call before stopping its lab): the next in line comes forward."""
        with self._lock:
            if pid not in self._pids:
                return
            was_first = self._pids[0] == pid
            self._pids.remove(pid)
            if was_first and self._pids:
                set_nice(self._pids[0], FOREGROUND)

    def foreground(self) -> int | None:
        with self._lock:
            return self._pids[0] if self._pids else None
