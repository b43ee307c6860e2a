"""A captured trace (the files l1/tracefs.py left in a run directory) as faults, markers
and a loss check.

The check is strict: every CPU's ring buffer must report no overrun, no commit overrun
and no dropped events; no page may carry the "events lost" flag; and the number of events
decoded must equal the number of entries the kernel counted. Anything else is
"trace incomplete", whatever the faults look like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lab.analysis.mapping import Fault
from lab.analysis.ringbuf import Event, TraceFormatError, decode_cpu, load_formats

FAULT_EVENT = "kvm_guest_fault"
#: an invalidation of the VMM's mm, as KVM's MMU notifier began it (lab/analysis/retry.py)
UNMAP_EVENT = "kvm_unmap_hva_range"


@dataclass
class Trace:
    events: list[Event]
    faults: list[Fault]
    markers: list[tuple[int, str]]  # (ts, text)
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    #: when each recorded invalidation of the VMM's mm began (ts)
    unmaps: list[int] = field(default_factory=list)
    #: each of them as (ts, first host address, end): what the MMU notifier unmapped
    invalidations: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


def loss_problems(stats: dict[str, dict[str, Any]], decoded: int, missed_pages: int, unknown: int) -> list[str]:
    """Why a capture is not evidence (empty if it is)."""
    problems = []
    for cpu, s in sorted(stats.items()):
        for key in ("overrun", "commit_overrun", "dropped_events"):
            if s.get(key):
                problems.append(f"cpu{cpu}: {s[key]} {key.replace('_', ' ')}")
    if missed_pages:
        problems.append(f"{missed_pages} trace page(s) flagged 'events lost'")
    entries = sum(int(s.get("entries", 0)) for s in stats.values())
    if decoded + unknown != entries:
        problems.append(f"decoded {decoded + unknown} events but the kernel counted {entries}")
    if unknown:
        problems.append(f"{unknown} events of a type with no format file")
    return problems


def load(run_dir: Path, info: dict[str, Any] | None = None) -> Trace:
    """`info` is result.json's "trace" (read from run_dir if not given)."""
    if info is None:
        info = json.loads((run_dir / "result.json").read_text())["trace"]
    formats, data_offset, page_size = load_formats(run_dir, info.get("formats"))
    events: list[Event] = []
    missed = unknown = 0
    for cpu, data in cpu_pages(run_dir, info):
        decoded = decode_cpu(data, int(cpu), formats, data_offset, page_size)
        events += decoded.events
        missed += decoded.missed_pages
        unknown += decoded.unknown
    events.sort(key=lambda e: (e.ts, e.cpu))
    problems = loss_problems(info["stats"], len(events), missed, unknown)
    return from_events(events, problems, sum(int(s.get("entries", 0)) for s in info["stats"].values()))


def cpu_pages(run_dir: Path, info: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(CPU, its raw pages) from a run directory: each CPU's span of trace.raw (result.json's
    trace "spans"), or its own cpuN.raw in runs recorded before."""
    files, spans = info["files"], info.get("spans")
    read: dict[str, bytes] = {}
    for cpu, name in files.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise TraceFormatError(f"result.json: trace file {name!r} of cpu {cpu} is not a file name")
        data = read.setdefault(name, (run_dir / name).read_bytes())
        if spans is not None:
            span = spans.get(cpu) if isinstance(spans, dict) else None
            if (not isinstance(span, list) or len(span) != 2 or not all(type(x) is int and x >= 0 for x in span)
                    or span[0] + span[1] > len(data)):
                raise TraceFormatError(f"result.json: trace span of cpu {cpu} is {span!r}, not [offset, length] "
                                       f"inside {name} ({len(data)} bytes)")
            data = data[span[0]:span[0] + span[1]]
        yield cpu, data


def from_events(events: list[Event], problems: list[str] | None = None, entries: int = 0) -> Trace:
    """Faults numbered by phase: "kvmlab: phase N" markers (written by the probe VMM at
    each pause, after its actions) start phase N."""
    faults, markers, unmaps, invalidations = [], [], [], []
    phase = 0
    for e in events:
        if e.name == "print":
            text = str(e.fields.get("buf", "")).strip()
            markers.append((e.ts, text))
            if text.startswith("kvmlab: phase "):
                phase = int(text.split()[-1])
        elif e.name == FAULT_EVENT:
            esr = int(e.fields.get("hsr", e.fields.get("esr", 0)))
            faults.append(Fault(int(e.fields["ipa"]), esr, e.ts, e.cpu, phase, int(e.fields.get("vcpu_pc", 0)),
                                e.pid))
        elif e.name == UNMAP_EVENT:
            unmaps.append(e.ts)
            invalidations.append((e.ts, int(e.fields.get("start", 0)), int(e.fields.get("end", 0))))
    return Trace(events, faults, markers, list(problems or []), entries, unmaps, invalidations)
