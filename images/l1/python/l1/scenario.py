"""One scenario (or one `kvmlab trace` command) in L1, end to end, in a process the
resident runner (l1/runner.py) forked for it:

1. L1 settings: THP modes, huge page reservations (checked: too few is a skip, not a
   silent change of scenario); memory compacted (and the page cache dropped when
   little is free, or for huge pages) so THP allocations do not depend on what ran before;
2. tracing on, following the VMM's process tree;
3. the VMM: the probe (forked from here: no second interpreter start), L1's QEMU, or a
   shell command; killed with SIGKILL after `kill_after` seconds if the scenario asks,
   and after `timeout` seconds in any case;
4. tracing off; stats, formats and raw buffers written to the run directory (the share);
5. settings restored; result.json written last, and the waiting client told at once;
6. then tracefs left fresh for the next scenario (the pid filter and the buffers cleared:
   two synchronize_rcu, 30-40 ms each under TCG, while the host reads the result).

    python3 -m l1.scenario JOB.json     (by hand: what the runner's fork does)
"""

from __future__ import annotations

import collections
import faulthandler
import fcntl
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

from lab.shared.contract import TIMEOUT_STRETCH, ContractError, L1Settings, Result, ScenarioJob, VmmOutcome, decode
from lab.shared.files import write_json

from . import tracefs

MM = "/sys/kernel/mm"
#: Set by the resident runner (l1/runner.py) in the process it forked for this scenario:
#: its pid and the job's number, reported in result.json.
RUNNER: dict[str, int] | None = None
#: Set by the runner too: tells the waiting client the scenario's status as soon as
#: result.json is written, before the tracefs clean-up that follows it.
RESULT_OUT: Callable[[int], None] | None = None
KHUGEPAGED_PARKED_MS = 86_400_000


def read_setting(path: str) -> str:
    with open(path) as f:
        text = f.read().strip()
    if "[" in text:  # "always [madvise] never"
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


def write_setting(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


class Settings:
    """Applies L1 settings and remembers the old values for restore()."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    def set(self, path: str, value: Any) -> None:
        self.saved.append((path, read_setting(path)))
        write_setting(path, str(value))

    def restore(self) -> None:
        for path, value in reversed(self.saved):
            try:
                write_setting(path, value)
            except OSError:
                pass
        self.saved.clear()


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            words = value.split()
            if words and words[0].isdigit():
                out[key] = int(words[0])
    return out


#: L1's page cache is dropped before a scenario when less than this share of its memory is free.
DROP_CACHES_BELOW = 0.5


def must_drop_caches(info: dict[str, int]) -> bool:
    """Whether to drop L1's page cache before a scenario: when less than half of L1's
    memory is free. Not otherwise: each drop threw QEMU's binary and libraries out, and
    reading them back from the squashfs under TCG made every QEMU start 1.5 s longer
    (0.9 s -> 2.45 s start and quit, measured in a 6.12 L1). Memory is compacted before
    every scenario either way, so THP finds free 2 MiB blocks; a huge page reservation
    that falls short drops the cache and asks again (reserve_hugepages)."""
    total, free = info.get("MemTotal", 0), info.get("MemFree", 0)
    return not total or free < DROP_CACHES_BELOW * total


def compact(drop: bool = False) -> None:
    """L1's memory compacted, its page cache dropped first with `drop`."""
    if drop:
        write_setting("/proc/sys/vm/drop_caches", "3")
    if os.path.exists("/proc/sys/vm/compact_memory"):
        write_setting("/proc/sys/vm/compact_memory", "1")


def reserve_hugepages(path: str, count: int, settings: Settings, dropped: bool) -> tuple[int, bool]:
    """Reserves `count` huge pages at `path` (nr_hugepages); returns (how many L1 has,
    whether the page cache was dropped). A reservation that falls short is asked again
    once the page cache is dropped and memory compacted: cached pages may hold the
    contiguous blocks it needs. Dropped only then: before, every hugetlb scenario dropped
    it, and the thp suite's first QEMU scenario (l2-linux-thp, after the hugetlb ones)
    read QEMU's 50 MB back from the squashfs."""
    settings.set(path, count)
    got = int(read_setting(path))
    if got < count and not dropped:
        compact(drop=True)
        write_setting(path, str(count))  # (its old value is saved already)
        got, dropped = int(read_setting(path)), True
    return got, dropped


#: Held shared by a scenario that maps the 1 GiB huge page, exclusive by L1's warm-up
#: while it clears that page (images/l1/rootfs/kvmlab/hugepage-warm, which skips it when held).
HUGE_PAGE_LOCK = "/run/kvmlab/huge-1g.lock"
#: the lock's descriptor, open for the scenario process's life (the VMM a child of it)
_HUGE_PAGE_HELD: list[int] = []


def hold_huge_page(path: str = HUGE_PAGE_LOCK) -> None:
    """Waits until L1's warm-up has freed the 1 GiB page (seconds at most: it clears it
    once), then keeps it from taking the page while this scenario runs."""
    if _HUGE_PAGE_HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _HUGE_PAGE_HELD.append(fd)


def apply_l1(spec: L1Settings, settings: Settings) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Returns (what L1 now has, None or why the scenario cannot run: ("na", the feature
    this kernel lacks) or ("skip", the resource L1 lacks))."""
    thp = f"{MM}/transparent_hugepage"
    for value, path in ((spec.thp, "enabled"), (spec.defrag, "defrag"), (spec.shmem_thp, "shmem_enabled")):
        if value:
            settings.set(f"{thp}/{path}", value)
    mthp: dict[str, str] = {}
    for sizes, name, what in ((spec.mthp, "enabled", "multi-size THP (6.8+)"),
                              (spec.shmem_mthp, "shmem_enabled", "multi-size shmem THP (6.11+)")):
        for size_kb, mode in sizes.items():
            path = f"{thp}/hugepages-{size_kb}kB/{name}"
            if not os.path.exists(path):
                return {}, ("na", f"this kernel has no {what} control for {size_kb} KiB folios ({path})")
            settings.set(path, mode)
            mthp[f"{size_kb}kB/{name}"] = read_setting(path)
    if not spec.khugepaged:
        # khugepaged parked: a collapse mid-scenario remaps stage 2 and changes smaps at
        # random (seen: read-then-write's split pages collapsed back, AnonHugePages 14 MiB).
        # The write wakes it once now, before the VMM exists, then it sleeps for a day.
        sleep = f"{thp}/khugepaged/scan_sleep_millisecs"
        if os.path.exists(sleep):
            settings.set(sleep, KHUGEPAGED_PARKED_MS)
    dropped = must_drop_caches(meminfo())
    compact(drop=dropped)
    have: dict[str, Any] = {"thp": read_setting(f"{thp}/enabled"), "defrag": read_setting(f"{thp}/defrag"),
            "shmem_thp": read_setting(f"{thp}/shmem_enabled"), "hugepages": {}, **({"mthp": mthp} if mthp else {}),
            "caches_dropped": dropped}
    for size_kb, count in spec.hugepages.items():
        path = f"{MM}/hugepages/hugepages-{size_kb}kB/nr_hugepages"
        if not os.path.exists(path):
            return have, ("na", f"this kernel has no {size_kb} KiB huge pages")
        if int(size_kb) == 1 << 20:
            hold_huge_page()
        try:
            got, dropped = reserve_hugepages(path, int(count), settings, dropped)
        except OSError as exc:
            # EINVAL: pages above the buddy allocator's largest order need CONTIG_ALLOC.
            return have, ("na", f"this kernel cannot reserve {size_kb} KiB huge pages at run time ({exc.strerror}; "
                          "it needs CONFIG_CONTIG_ALLOC, e.g. through CONFIG_CMA)")
        have["hugepages"][size_kb] = got
        have["caches_dropped"] = dropped
        if got < int(count):
            return have, ("skip", f"L1 could reserve only {got} of {count} huge pages of {size_kb} KiB "
                          "(memory too fragmented or too small)")
    return have, None


def run_vmm(job: ScenarioJob, out_dir: str, probe_job: Any = None) -> tuple[int, dict[str, Any]]:
    """Starts the VMM in a child process; returns (pid, how to wait for it). The probe's
    job is decoded once, here, before the fork: nothing is left to do in the race window
    between the child's start and its first vCPU run."""
    kind = job.vmm
    if kind == "probe":
        from . import probe

        probe_job = probe_job or probe.load(os.path.join(out_dir, "probe-job.json"))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # A signal that kills the VMM (SIGSEGV in KVM_RUN's return path, a bad
                # mapping) leaves every thread's Python stack here: the evidence, kept.
                # (In L1's RAM: it reaches the share only if the VMM died with something in it.)
                os.makedirs(FAULT_DIR, exist_ok=True)
                faulthandler.enable(open(_fault_tmp(os.getpid()), "w"), all_threads=True)
                code = probe.run(probe_job)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid, {"out_dir": out_dir}
    if kind == "qemu":
        from . import qemu_vmm

        assert job.qemu is not None
        return qemu_vmm.start(job.qemu, out_dir)
    # A shell command (kvmlab trace), its output kept in the run directory.
    log = open(os.path.join(out_dir, "command.log"), "wb")
    proc = subprocess.Popen(["sh", "-c", job.command or "true"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd="/root",
                            # files the command puts there come back with the trace's artefacts
                            env={**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
                                 "KVMLAB_RUN_DIR": out_dir})  # the command gets glibc's defaults
    return proc.pid, {"proc": proc}


class Progress:
    """Whether the VMM still moves: its stage-2 faults (every event the trace saw) and its
    guest's console output, sampled every half second."""

    def __init__(self, out_dir: str, traced: bool):
        self.console = os.path.join(out_dir, "l2-console.log")
        self.traced = traced
        self.samples: collections.deque[tuple[float, tuple[int, int]]] = collections.deque(maxlen=4096)

    def now(self) -> tuple[int, int]:
        events = 0
        if self.traced:
            try:
                events = tracefs.events_seen()
            except OSError:
                pass
        try:
            console = os.stat(self.console).st_size
        except OSError:
            console = 0
        return events, console

    def sample(self, t: float) -> None:
        if not self.samples or t - self.samples[-1][0] >= 0.5:
            self.samples.append((t, self.now()))

    def moving(self, t: float, window: float) -> str:
        """What advanced in the last `window` seconds ('' if nothing did)."""
        then = next((v for ts, v in reversed(self.samples) if ts <= t - window), None)
        if then is None:
            return ""
        now = self.now()
        moved = [what for what, a, b in (("stage-2 faults", then[0], now[0]), ("console output", then[1], now[1]))
                 if b > a]
        return " and ".join(moved)


def wait_vmm(pid: int, job: ScenarioJob, extra: dict[str, Any]) -> VmmOutcome:
    """Waits for the VMM: killed at `kill_after` if the scenario asks; at its timeout if
    nothing moved in the last part of it, else given more time while it moves (up to
    TIMEOUT_STRETCH times the timeout): a slow or shared machine does not turn a run
    that is getting on into a timeout."""
    started = time.monotonic()
    kill_after = job.kill_after
    if kill_after is not None and job.kill_after_max:
        kill_after = random.uniform(kill_after, job.kill_after_max)
    # kill_after counts from the run's first traced event (its first stage-2 fault): a VMM
    # slow to reach KVM_RUN (a cold first run, a loaded machine) is still killed while its
    # vCPUs fault, not before. A VMM that never faults meets its timeout instead.
    first_event: float | None = None if kill_after is not None and job.vmm != "command" else started
    outcome: VmmOutcome = {}
    if job.vmm == "qemu" and job.qemu is not None:
        from . import qemu_vmm

        outcome = qemu_vmm.drive(extra, job.qemu, kill_after)  # filled in as the guest runs
    exited = _pidfd(pid)
    try:
        return _watch(pid, exited, job, extra, outcome, started, kill_after, first_event)
    finally:
        if exited is not None:
            os.close(exited)


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when `pid` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _watch(pid: int, exited: int | None, job: ScenarioJob, extra: dict[str, Any], outcome: VmmOutcome,
           started: float, kill_after: float | None, first_event: float | None) -> VmmOutcome:
    """wait_vmm's loop, until the VMM has exited (`exited`: its pidfd, if any)."""
    timeout = deadline = job.timeout
    window = min(timeout / 2, 10.0)
    progress = Progress(extra.get("out_dir", ""), traced=job.repeat == 1)
    # `kvmlab trace --timeout S` kills its command at S, as it says
    limit = timeout * (TIMEOUT_STRETCH if job.vmm != "command" else 1)
    stretched = ""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        elapsed = now - started
        if first_event is None and _events_seen() > 0:
            first_event = now
        if (kill_after is not None and first_event is not None and now - first_event >= kill_after
                and "killed" not in outcome):
            os.kill(pid, signal.SIGKILL)
            outcome["killed"] = (f"SIGKILL {now - first_event:.2f} s after its first stage-2 fault "
                                 f"({elapsed:.2f} s after it started), as the scenario asks")
        elif elapsed >= deadline and "timeout" not in outcome:
            moving = progress.moving(elapsed, window)
            if moving and deadline < limit:
                deadline = min(deadline + window, limit)
                stretched = moving
            else:
                os.kill(pid, signal.SIGKILL)
                why = "the scenario's timeout" if not stretched else (
                    f"the scenario's timeout of {timeout:g} s, stretched while {stretched} still advanced; "
                    + (f"{moving} still advancing at {TIMEOUT_STRETCH}x" if moving
                       else f"nothing moved in the last {window:g} s"))
                outcome["timeout"] = f"still running after {elapsed:.0f} s ({why}), killed with SIGKILL"
        progress.sample(elapsed)
        # Woken at once when the VMM exits (its pidfd); otherwise every 10 ms while a kill
        # at `kill_after` is due, every 0.1 s for the timeout and the progress samples.
        pause = 0.01 if kill_after is not None and "killed" not in outcome else 0.1
        if exited is not None:
            select.select([exited], [], [], pause)
        else:
            time.sleep(0.01)
    outcome["seconds"] = round(time.monotonic() - started, 3)
    fault = _keep_fault_log(pid, extra.get("out_dir", ""))
    if os.WIFSIGNALED(status):
        outcome["signal"] = os.WTERMSIG(status)
        if fault and "killed" not in outcome and "timeout" not in outcome:
            outcome["fault"] = fault
    else:
        outcome["exit_code"] = os.WEXITSTATUS(status)
    return outcome


def _events_seen() -> int:
    try:
        return tracefs.events_seen()
    except (OSError, ValueError):
        return 1  # no trace to read: the clock starts now


FAULT_LOG = "vmm-fault.log"
#: where the probe VMM's faulthandler writes, in L1's RAM: a file made in the share for
#: every VMM cost 15-25 ms under TCG, and is empty unless the VMM crashed
FAULT_DIR = "/run/kvmlab"


def _fault_tmp(pid: int) -> str:
    return os.path.join(FAULT_DIR, f"vmm-fault-{pid}.log")


def _keep_fault_log(pid: int, out_dir: str) -> str:
    """What faulthandler wrote for the VMM `pid` that just ended, copied into `out_dir`
    (vmm-fault.log) when there is something; its last lines ('' if nothing)."""
    tmp = _fault_tmp(pid)
    try:
        with open(tmp, "rb") as f:
            data = f.read()
        os.unlink(tmp)
    except OSError:
        return ""
    if not data or not out_dir:
        return ""
    with open(os.path.join(out_dir, FAULT_LOG), "wb") as f:
        f.write(data)
    return "".join(data.decode(errors="replace").splitlines(keepends=True)[-40:]).strip()


def stress(job: ScenarioJob, out_dir: str) -> dict[str, Any]:
    """The VMM `repeat` times in a row, each killed (SIGKILL) at a random moment of the
    kill_after window while its vCPUs fault: exit_mmap() racing stage-2 faults, over and
    over. Not traced: millions of faults; L1's log is the verdict."""
    probe_job = None
    if job.vmm == "probe":
        from . import probe  # imported and the job decoded once here: each forked VMM starts at once

        probe_job = probe.load(os.path.join(out_dir, "probe-job.json"))
    # Faults are counted, not kept: proof that the vCPUs were faulting in every run.
    counter = tracefs.Counter(job.trace.events, 1024,
                              follow_pid=os.getpid())
    counter.start()
    runs = []
    started = time.monotonic()
    try:
        for i in range(job.repeat):
            counter.reset()
            pid, extra = run_vmm(job, out_dir, probe_job)
            if i == 0:
                with open(os.path.join(out_dir, "vmm.pid"), "w") as f:
                    f.write(f"{pid}\n")
            runs.append(wait_vmm(pid, job, extra))
            runs[-1]["faults"] = counter.count()
            # A VMM that ended by itself (a signal from the kernel, a crash) is a finding:
            # the host reports it, and the runs go on, N in all.
    finally:
        counter.stop()
    seconds = time.monotonic() - started
    return {"runs": runs, "done": len(runs), "killed": sum("killed" in r for r in runs),
            "faults": sum(r["faults"] for r in runs), "seconds": round(seconds, 3),
            "per_second": round(len(runs) / seconds, 3) if seconds else 0}


def main(argv: list[str]) -> int:
    job_path = argv[0]
    out_dir = os.path.dirname(job_path)
    result: Result = {"started": time.time()}  # the contract's result.json
    settings = Settings()
    capture = None
    started = time.monotonic()
    # Seconds from the start of main() to the end of each step (a step that did not run is
    # absent): where a scenario's time goes in L1, for the bench and for anyone asking.
    phases: dict[str, float] = {}
    result["phases"] = phases

    def mark(step: str) -> None:
        phases[step] = round(time.monotonic() - started, 3)

    vmm_pid = None
    # Interrupted from the host (kvmlab's Ctrl-C, a timeout): unwind, so the VMM is killed
    # and L1's settings are restored before this process ends.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with open(job_path) as f:
            job = decode(ScenarioJob, json.load(f))
        mark("job")
        if RUNNER is not None:
            result["runner"] = RUNNER
        result["l1_release"] = open("/proc/sys/kernel/osrelease").read().strip()
        result["l1_page_size"] = page = os.sysconf("SC_PAGE_SIZE")
        if job.granules and page not in job.granules:
            result["na"] = (f"its expectations are written for {' or '.join(f'{g // 1024} KiB' for g in job.granules)}"
                            f" pages; L1's kernel has {page // 1024} KiB pages")
            result["l1"] = {}
            return 0
        result["l1"], cannot = apply_l1(job.l1, settings)
        mark("l1_settings")
        if cannot:
            result[cannot[0]] = cannot[1]  # type: ignore[literal-required]  # "na" or "skip"
            return 0
        if job.repeat > 1:
            result["repeat"] = stress(job, out_dir)
            result["vmm"] = result["repeat"]["runs"][-1] if result["repeat"]["runs"] else {}
            return 0
        capture = tracefs.Capture(job.trace.events, job.trace.buffer_kb,
                                  follow_pid=os.getpid() if job.trace.follow else None,
                                  optional=job.trace.optional)
        capture.start()
        result["setup_seconds"] = round(time.monotonic() - started, 3)
        mark("trace_on")
        vmm_pid, extra = run_vmm(job, out_dir)
        mark("vmm_started")
        with open(os.path.join(out_dir, "vmm.pid"), "w") as f:  # the VMM runs (for the host to see)
            f.write(f"{vmm_pid}\n")
        result["vmm"] = wait_vmm(vmm_pid, job, extra)
        vmm_pid = None
        mark("vmm_done")
        capture.stop()
        mark("trace_off")
        dumped = time.monotonic()
        result["trace"] = capture.dump(out_dir)
        result["trace"]["dump_seconds"] = round(time.monotonic() - dumped, 3)
        mark("dumped")
    except ContractError as exc:  # the host and L1 disagree on the job: a kvmlab bug
        result["error"] = f"the job does not match the contract (lab/shared/contract.py): {exc}"
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SystemExit) else "interrupted"
        result["traceback"] = traceback.format_exc()
        if capture is not None:
            try:
                capture.stop()
            except OSError:
                pass
    finally:
        if vmm_pid is not None:
            try:
                os.kill(vmm_pid, signal.SIGKILL)
                os.waitpid(vmm_pid, 0)
            except OSError:
                pass
            _keep_fault_log(vmm_pid, out_dir)
        settings.restore()
        mark("restored")
        result["seconds"] = round(time.monotonic() - started, 3)
        write_json(os.path.join(out_dir, "result.json"), result, indent=1, atomic=False)
    if RESULT_OUT is not None and "error" not in result:
        # the host may read the result now (an interrupted or failed scenario's process
        # instead ends before its client is told: the host then finds L1 as it left it)
        RESULT_OUT(0)
    if capture is not None:
        capture.release()  # the pid filter and the buffers cleared for the next scenario
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
