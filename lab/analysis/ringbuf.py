"""Decoding the kernel's raw trace pages (per_cpu/cpuN/trace_pipe_raw) on the host.

A page is a header (u64 timestamp, local_t commit: the length of the data, with bit 31
"events were lost before this page" and bit 30 "the count of lost events is stored") and
then events, each behind a 32-bit header: type_len (5 bits) and time_delta (27 bits).
type_len 1-28: data of type_len*4 bytes follows; 0: a u32 length (counting itself), then
data; 29: padding (time_delta 0: the rest of the page is empty); 30: time extend (+8
bytes); 31: absolute time stamp. Field layouts come from the event's `format` file, as
the kernel that wrote the trace describes them (see kernel/trace/ring_buffer.c).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.shared.contract import TRACE_FORMATS

RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
PADDING, TIME_EXTEND, TIME_STAMP = 29, 30, 31


class TraceFormatError(ValueError):
    pass


@dataclass
class Field:
    name: str
    offset: int
    size: int
    signed: bool
    is_string: bool = False


@dataclass
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field] = field(default_factory=dict)

    def decode(self, data: bytes) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        for f in self.fields.values():
            if f.name.startswith("common_"):
                continue
            raw = data[f.offset:f.offset + f.size] if f.size else data[f.offset:]
            if f.is_string:
                out[f.name] = raw.split(b"\0", 1)[0].decode(errors="replace")
            else:
                out[f.name] = int.from_bytes(raw, "little", signed=f.signed)
        return out


_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
                    r"(\s*signed:(?P<signed>\d+);)?")


def parse_format(text: str, system: str = "") -> EventFormat:
    """An events/SYSTEM/EVENT/format file."""
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name or not ident:
        raise TraceFormatError("not an event format file (no name: or ID: line)")
    fmt = EventFormat(system, name.group(1), int(ident.group(1)))
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        is_array = decl.endswith("]")
        fname = re.sub(r"\[.*\]$", "", decl).split()[-1].lstrip("*")
        is_string = is_array and decl.split()[0] in ("char", "unsigned") and "char" in decl
        fmt.fields[fname] = Field(fname, int(m.group("offset")), int(m.group("size")),
                                  m.group("signed") == "1", is_string)
    return fmt


def parse_header_page(text: str) -> tuple[int, int]:
    """(offset of data, page size) from events/header_page."""
    for m in _FIELD.finditer(text):
        if m.group("decl").split()[-1] == "data":
            return int(m.group("offset")), int(m.group("offset")) + int(m.group("size"))
    raise TraceFormatError("events/header_page has no data field")


@dataclass
class Event:
    cpu: int
    ts: int  # ns, per the trace clock
    name: str
    pid: int
    fields: dict[str, int | str]


@dataclass
class DecodedCpu:
    events: list[Event]
    pages: int
    missed_pages: int  # pages flagged "events lost before this page"
    unknown: int  # events of a type we have no format for


def decode_cpu(data: bytes, cpu: int, formats: dict[int, EventFormat], data_offset: int = 16,
               page_size: int = 4096) -> DecodedCpu:
    if len(data) % page_size:
        raise TraceFormatError(f"cpu{cpu}: {len(data)} bytes is not a whole number of {page_size}-byte pages")
    events: list[Event] = []
    missed = unknown = 0
    unpack_u32 = struct.Struct("<I").unpack_from
    unpack_type = struct.Struct("<H").unpack_from
    for page_start in range(0, len(data), page_size):
        ts, commit = struct.unpack_from("<Qq", data, page_start)
        if commit & RB_MISSED_EVENTS:
            missed += 1
        length = commit & (RB_MISSED_STORED - 1)
        if length > page_size - data_offset:
            raise TraceFormatError(f"cpu{cpu}: page {page_start // page_size} claims {length} bytes of data")
        pos = page_start + data_offset
        end = pos + length
        while pos < end:
            header, = unpack_u32(data, pos)
            type_len, delta = header & 0x1F, header >> 5
            if type_len == PADDING:
                if delta == 0:
                    break
                pos += 4 + unpack_u32(data, pos + 4)[0]
                continue
            if type_len == TIME_EXTEND:
                ts += (unpack_u32(data, pos + 4)[0] << 27) + delta
                pos += 8
                continue
            if type_len == TIME_STAMP:
                ts = (unpack_u32(data, pos + 4)[0] << 27) | delta
                pos += 8
                continue
            if type_len == 0:
                size = unpack_u32(data, pos + 4)[0] - 4
                start = pos + 8
            else:
                size = type_len * 4
                start = pos + 4
            ts += delta
            payload = data[start:start + size]
            pos = start + size
            fmt = formats.get(unpack_type(payload, 0)[0])
            if fmt is None:
                unknown += 1
                continue
            pid = int.from_bytes(payload[4:8], "little", signed=True)
            events.append(Event(cpu, ts, fmt.name, pid, fmt.decode(payload)))
    return DecodedCpu(events, len(data) // page_size, missed, unknown)


def load_formats(directory: Path, texts: Any = None) -> tuple[dict[int, EventFormat], int, int]:
    """The event formats `l1/tracefs.py` saved (formats by id, data offset, page size):
    `texts` (result.json's trace "formats", since trace.raw), else formats.json, or, in
    runs recorded before it, a *.format file each."""
    texts = format_texts(directory) if texts is None else _format_map(
        texts, "result.json: trace.formats is not a map of event names to format texts")
    if not isinstance(texts.get("header_page"), str):
        raise TraceFormatError(f"no header_page format in {directory}")
    data_offset, page_size = parse_header_page(texts["header_page"])
    formats: dict[int, EventFormat] = {}
    for name, text in sorted(texts.items()):
        if name == "header_page":
            continue
        fmt = parse_format(text, name.split(":", 1)[0])
        formats[fmt.id] = fmt
    return formats, data_offset, page_size


def format_texts(directory: Path) -> dict[str, str]:
    """{"header_page": TEXT, "SYSTEM:EVENT": TEXT} from what L1 left in `directory`."""
    bundle = directory / TRACE_FORMATS
    if not bundle.exists():
        texts = {path.name[:-len(".format")].replace("--", ":", 1): path.read_text()
                 for path in sorted(directory.glob("*--*.format"))}
        header = directory / "header_page.format"
        return {**texts, "header_page": header.read_text()} if header.exists() else texts
    try:
        texts = json.loads(bundle.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{bundle.name}: not JSON ({exc})") from None
    return _format_map(texts, f"{bundle.name}: not a map of event names to format texts")


def _format_map(texts: Any, problem: str) -> dict[str, str]:
    """`texts` if it maps event names to format texts (L1 wrote it: untrusted), else
    TraceFormatError(problem)."""
    if not isinstance(texts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items()):
        raise TraceFormatError(problem)
    return texts
