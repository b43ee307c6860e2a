"""Tracepoint capture in L1 with loss accounting.

The ring buffer is sized up front (per CPU), set not to overwrite, and read raw (the
kernel's binary pages from per_cpu/cpuN/trace_pipe_raw) after tracing stops: no text
formatting in L1 (slow under TCG), and ~45 bytes per kvm_guest_fault event through the
share, every CPU's pages in one file (trace.raw). The host decodes the pages with the
event formats, which go into result.json (lab/analysis/ringbuf.py). Before draining,
every CPU's stats (entries, overrun, commit overrun, dropped events) are saved: the host
checks that it decoded exactly `entries` events and that nothing was lost.
"""

from __future__ import annotations

import errno
import os
from typing import BinaryIO

from lab.shared.contract import TRACE_RAW

TRACING = "/sys/kernel/tracing"


def write(path: str, value: str) -> None:
    with open(os.path.join(TRACING, path), "w") as f:
        f.write(value)


def read(path: str) -> str:
    with open(os.path.join(TRACING, path)) as f:
        return f.read()


def cpus() -> list[int]:
    return sorted(int(name[3:]) for name in os.listdir(os.path.join(TRACING, "per_cpu")) if name.startswith("cpu"))


def parse_stats(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        try:
            out[key.strip().replace(" ", "_")] = float(value.strip()) if "." in value else int(value.strip())
        except ValueError:
            pass
    return out


def events_seen() -> int:
    """Every event the ring buffers took since the last reset, kept, overwritten or
    dropped: it grows while the VMM's guest still faults."""
    total = 0
    for cpu in cpus():
        stats = parse_stats(read(f"per_cpu/cpu{cpu}/stats"))
        total += int(stats.get("entries", 0)) + int(stats.get("overrun", 0)) + int(stats.get("dropped_events", 0))
    return total


#: per-CPU counters that a clear of the buffers (`trace`) zeroes
FRESH_COUNTERS = ("entries", "overrun", "commit_overrun", "dropped_events", "read_events")


def fresh() -> bool:
    """Whether every CPU's buffer is as a clear left it: nothing in it, nothing read, lost
    or overrun since (counters that only a clear zeroes)."""
    return all(not any(int(parse_stats(read(f"per_cpu/cpu{cpu}/stats")).get(key, 1)) for key in FRESH_COUNTERS)
               for cpu in cpus())


def _has(event: str) -> bool:
    return ":" in event and os.path.isdir(os.path.join(TRACING, "events", *event.split(":", 1)))


#: Per-CPU ring buffers up to this size stay from one scenario to the next, grown only when
#: one needs more: a resize costs 0.05 s at 4 MiB, 0.3 s at 64 MiB and 1.6 s at 256 MiB
#: under TCG (measured in L1). A larger one is made for its scenario alone and given back
#: by the next: a few hundred MiB of L1's memory kept would change what THP can allocate.
KEEP_KB = 8192


def _slack(kb: int) -> int:
    """How far above a request the kernel's size may read back: buffer_size_kb rounds up to
    whole ring-buffer pages (measured in L1: 8192 -> 8195, 1706 -> 1709, 4010 -> 4012)."""
    return kb // 100 + 16


def buffer_for(current_kb: int, need_kb: int) -> int:
    """The per-CPU buffer size for a scenario that needs `need_kb`, the buffer being
    `current_kb` now (as buffer_size_kb reads: rounded up to whole pages)."""
    if need_kb <= current_kb <= need_kb + _slack(need_kb):
        return current_kb  # this very size, as the kernel rounded it: nothing to do
    if need_kb > KEEP_KB or current_kb > KEEP_KB + _slack(KEEP_KB):
        return need_kb
    return max(current_kb, need_kb)


#: the kernel threads that change a process's memory on their own
MM_THREADS = ("khugepaged", "kcompactd", "kswapd")


#: their pids, once found: kernel threads live as long as L1 (the resident runner looks
#: them up before it forks scenarios; reading every /proc/PID/comm took 0.04-0.08 s of each
#: scenario under TCG)
_mm_threads: list[str] | None = None


def mm_threads() -> list[str]:
    global _mm_threads
    if _mm_threads is None:
        _mm_threads = _find_mm_threads()
    return _mm_threads


def _find_mm_threads() -> list[str]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().startswith(MM_THREADS):
                        pids.append(pid)
            except OSError:
                pass
    return pids


class Capture:
    def __init__(self, events: list[str], buffer_kb: int, follow_pid: int | None = None,
                 optional: list[str] | None = None):
        for event in events:
            if not _has(event):
                raise ValueError(f"no tracepoint {event!r} in this kernel (see {TRACING}/available_events)")
        # `optional` events are recorded where this kernel has them, and skipped where not
        self.events = events + [e for e in optional or [] if e not in events and _has(e)]
        self.buffer_kb = buffer_kb
        self.follow_pid = follow_pid

    def start(self) -> None:
        write("tracing_on", "0")
        write("set_event", "")  # every event off
        if not fresh():
            write("trace", "")  # every CPU's buffer emptied (release() did it, usually)
        write("options/overwrite", "0")  # a full buffer drops new events and counts them
        current = int(read("buffer_size_kb").split()[0])
        self.buffer_kb = buffer_for(current, self.buffer_kb)
        if self.buffer_kb != current:
            write("buffer_size_kb", str(self.buffer_kb))
        if self.follow_pid is not None:
            write("options/event-fork", "1")
            # and the mm's own threads: khugepaged's collapse, kcompactd's migration and
            # kswapd's reclaim unmap the VM's memory in their context, not the VMM's
            write("set_event_pid", " ".join([str(self.follow_pid)] + mm_threads()))
        else:
            write("set_event_pid", "")
        for event in self.events:
            write(os.path.join("events", *event.split(":", 1), "enable"), "1")
        write("tracing_on", "1")

    def stop(self) -> None:
        write("tracing_on", "0")
        for event in self.events:
            write(os.path.join("events", *event.split(":", 1), "enable"), "0")

    def release(self) -> None:
        """Once the run's result is out (after dump()): the pid filter cleared and every
        CPU's buffer emptied, so that the next capture finds tracefs fresh. Each is a
        synchronize_rcu in the kernel (30-40 ms under TCG), paid here while the host
        reads the result rather than in the next scenario's set-up."""
        write("set_event_pid", "")
        write("trace", "")

    def dump(self, out_dir: str) -> dict:
        """Copies every CPU's raw pages into out_dir/trace.raw; returns the stats, where each
        CPU's pages are in that file, and the event formats."""
        os.makedirs(out_dir, exist_ok=True)
        stats = {cpu: parse_stats(read(f"per_cpu/cpu{cpu}/stats")) for cpu in cpus()}
        formats = {"header_page": read("events/header_page")}
        for event in self.events + ["ftrace:print"]:
            formats[event] = read(os.path.join("events", *event.split(":", 1), "format"))
        page_size = _page_size(formats["header_page"])
        spans = {}
        offset = 0
        with open(os.path.join(out_dir, TRACE_RAW), "wb", buffering=1 << 20) as out:
            for cpu in stats:
                length = _drain(os.path.join(TRACING, f"per_cpu/cpu{cpu}/trace_pipe_raw"), out, page_size)
                stats[cpu]["raw_bytes"] = length
                spans[str(cpu)] = [offset, length]
                offset += length
        return {"stats": {str(c): s for c, s in stats.items()}, "files": {str(c): TRACE_RAW for c in stats},
                "spans": spans, "formats": formats, "page_size": page_size, "buffer_kb": self.buffer_kb,
                "events": self.events}


def _page_size(header_page: str) -> int:
    """offset + size of the `data` field: the ring buffer's page size."""
    for line in header_page.splitlines():
        if "data;" in line:
            fields = dict(part.strip().split(":", 1) for part in line.split(";") if ":" in part)
            return int(fields["offset"]) + int(fields["size"])
    return 4096


def _drain(source: str, out: BinaryIO, page_size: int) -> int:
    """Reads the CPU's pages into `out`; returns how many bytes."""
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    total = 0
    try:
        while True:
            try:
                chunk = os.read(fd, page_size)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not chunk:
                break
            out.write(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    return total


class Counter(Capture):
    """Counts events without keeping them (a stress run's millions of faults): the buffer
    overwrites, and each CPU's `entries` plus `overrun` is every event it saw since the
    last reset()."""

    def start(self) -> None:
        super().start()
        write("options/overwrite", "1")

    def reset(self) -> None:
        write("trace", "")  # empties every CPU's buffer and zeroes its counters

    def count(self) -> int:
        return events_seen()

    def stop(self) -> None:
        super().stop()
        write("options/overwrite", "0")
        self.release()
