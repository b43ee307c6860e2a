"""Raw ring-buffer pages: hand-made ones for every header type, and recorded ones."""

import json
import re
import struct
from pathlib import Path

import pytest

from lab.analysis import trace as tracefile
from lab.analysis.ringbuf import (
    RB_MISSED_EVENTS,
    TraceFormatError,
    decode_cpu,
    parse_format,
    parse_header_page,
)

TRACES = Path(__file__).parent.parent / "data" / "traces"
FAULT_FORMAT = (TRACES / "anon-thp-always" / "kvm--kvm_guest_fault.format").read_text()
PRINT_FORMAT = (TRACES / "anon-thp-always" / "ftrace--print.format").read_text()
FORMATS = {f.id: f for f in (parse_format(FAULT_FORMAT, "kvm"), parse_format(PRINT_FORMAT, "ftrace"))}
FAULT_ID = parse_format(FAULT_FORMAT).id
PRINT_ID = parse_format(PRINT_FORMAT).id


def fault(ipa, esr, pc=0x1000, pid=42):
    return struct.pack("<HBBiQQQQ", FAULT_ID, 0, 0, pid, pc, esr, ipa, ipa)


def header(type_len, delta):
    return struct.pack("<I", type_len | delta << 5)


def page(events: bytes, ts=1000, flags=0, size=4096):
    body = struct.pack("<Qq", ts, len(events) | flags) + events
    return body + bytes(size - len(body))


def test_formats_as_the_kernel_writes_them():
    fmt = parse_format(FAULT_FORMAT, "kvm")
    assert fmt.name == "kvm_guest_fault"
    assert {n: (f.offset, f.size) for n, f in fmt.fields.items() if not n.startswith("common_")} == \
        {"vcpu_pc": (8, 8), "hsr": (16, 8), "hxfar": (24, 8), "ipa": (32, 8)}
    assert parse_format(PRINT_FORMAT).fields["buf"].is_string
    assert parse_header_page((TRACES / "anon-thp-always" / "header_page.format").read_text()) == (16, 4096)


def test_small_events_time_extend_and_padding():
    data = fault(0x4000_0000, 0x93CF8046)  # 40 bytes: type_len 10
    events = (header(10, 5) + data
              + header(30, 3) + struct.pack("<I", 2)  # time extend: + (2 << 27) + 3
              + header(10, 7) + fault(0x4020_0000, 0x93CF8046)
              + header(29, 1) + struct.pack("<I", 12) + bytes(8)  # padding: 4 + array[0] bytes in all
              + header(10, 1) + fault(0x4040_0000, 0x93CF8047))
    decoded = decode_cpu(page(events), 1, FORMATS)
    assert [e.fields["ipa"] for e in decoded.events] == [0x4000_0000, 0x4020_0000, 0x4040_0000]
    assert [e.ts for e in decoded.events] == [1005, 1005 + 3 + (2 << 27) + 7, 1005 + 3 + (2 << 27) + 7 + 1]
    assert decoded.events[0].cpu == 1 and decoded.events[0].pid == 42


def test_long_events_carry_their_length_and_strings_stop_at_nul():
    text = b"kvmlab: phase 1\n\0"
    data = struct.pack("<HBBiQ", PRINT_ID, 0, 0, 7, 0) + text + bytes(3)
    events = header(0, 2) + struct.pack("<I", len(data) + 4) + data
    decoded = decode_cpu(page(events), 0, FORMATS)
    assert decoded.events[0].name == "print" and decoded.events[0].fields["buf"] == "kvmlab: phase 1\n"


def test_end_of_page_padding_stops_the_page():
    events = header(10, 1) + fault(1, 2) + header(29, 0) + bytes(4) + header(10, 1) + fault(3, 4)
    assert len(decode_cpu(page(events), 0, FORMATS).events) == 1


def test_lost_events_and_unknown_types_are_counted():
    events = header(10, 1) + fault(1, 2) + header(2, 1) + struct.pack("<HBBi", 999, 0, 0, 0)
    decoded = decode_cpu(page(events, flags=RB_MISSED_EVENTS), 0, FORMATS)
    assert decoded.missed_pages == 1 and decoded.unknown == 1 and len(decoded.events) == 1


def test_garbage_is_an_error_not_a_guess():
    with pytest.raises(TraceFormatError):
        decode_cpu(bytes(100), 0, FORMATS)
    with pytest.raises(TraceFormatError):
        decode_cpu(struct.pack("<Qq", 0, 5000) + bytes(4080), 0, FORMATS)


@pytest.mark.parametrize("name, events, faults", [
    ("anon-thp-always", 54, 52),  # 32 in the memslot, 19 UART writes (MMIO), 1 code fetch
    ("unaligned-head-tail", None, None),
    ("dirty-log-after-blocks", None, None),
])
def test_recorded_traces_decode_completely(name, events, faults):
    info = json.loads((TRACES / name / "result.json").read_text())["trace"]
    trace = tracefile.load(TRACES / name, info)
    assert trace.complete, trace.problems
    assert len(trace.events) == sum(s["entries"] for s in info["stats"].values())
    if events is not None:
        assert (len(trace.events), len(trace.faults)) == (events, faults)


def test_recorded_phases_follow_the_markers():
    trace = tracefile.load(TRACES / "dirty-log-after-blocks")
    texts = [t for _, t in trace.markers]
    assert texts[:3] == ["kvmlab: phase 0", "kvmlab: pause 1", "kvmlab: phase 1"]
    in_slot = [f for f in trace.faults if 0x4000_0000 <= f.ipa < 0x4100_0000]
    assert sum(f.phase == 0 for f in in_slot) == 8
    assert sum(f.phase == 1 for f in in_slot) == 8 * 512


def test_losses_are_reported():
    stats = {"0": {"entries": 10, "overrun": 0, "dropped_events": 3}, "1": {"entries": 5, "commit_overrun": 1}}
    problems = tracefile.loss_problems(stats, decoded=14, missed_pages=1, unknown=0)
    assert problems == ["cpu0: 3 dropped events", "cpu1: 1 commit overrun",
                        "1 trace page(s) flagged 'events lost'", "decoded 14 events but the kernel counted 15"]
    assert tracefile.loss_problems({"0": {"entries": 3}}, 3, 0, 0) == []


def test_formats_load_from_one_file_as_from_a_file_each(tmp_path):
    from lab.analysis.ringbuf import load_formats

    run = TRACES / "anon-thp-always"
    texts = {"header_page": (run / "header_page.format").read_text(), "kvm:kvm_guest_fault": FAULT_FORMAT,
             "ftrace:print": PRINT_FORMAT}
    (tmp_path / "formats.json").write_text(json.dumps(texts))
    one, each = load_formats(tmp_path), load_formats(run)
    assert one[1:] == each[1:] == (16, 4096)
    assert {f.name for f in one[0].values()} >= {"kvm_guest_fault", "print"}
    assert {i: f.name for i, f in one[0].items()} == {i: f.name for i, f in each[0].items() if f.name in
                                                      ("kvm_guest_fault", "print")}


@pytest.mark.parametrize("content", ["not json", '["a list"]', '{"header_page": 3}', "{}"])
def test_a_bad_formats_file_is_a_format_error(tmp_path, content):
    from lab.analysis.ringbuf import TraceFormatError, load_formats

    (tmp_path / "formats.json").write_text(content)
    with pytest.raises(TraceFormatError):
        load_formats(tmp_path)


def one_file_layout(name: str, tmp_path: Path) -> dict:
    """A recorded run (cpuN.raw, a .format file each) rewritten as L1 writes it since
    trace.raw: every CPU's pages in one file, the spans and the formats in result.json."""
    run = TRACES / name
    info = json.loads((run / "result.json").read_text())["trace"]
    blob, spans = b"", {}
    for cpu, file in sorted(info["files"].items()):
        data = (run / file).read_bytes()
        spans[cpu] = [len(blob), len(data)]
        blob += data
    (tmp_path / "trace.raw").write_bytes(blob)
    from lab.analysis.ringbuf import format_texts

    return {**info, "files": {cpu: "trace.raw" for cpu in info["files"]}, "spans": spans,
            "formats": format_texts(run)}


def test_one_trace_file_with_spans_decodes_as_a_file_per_cpu(tmp_path):
    name = "dirty-log-after-blocks"
    each = tracefile.load(TRACES / name)
    one = tracefile.load(tmp_path, one_file_layout(name, tmp_path))
    assert one.complete and each.complete
    assert [(e.cpu, e.ts, e.name, e.fields) for e in one.events] == [(e.cpu, e.ts, e.name, e.fields) for e in each.events]
    assert len(one.faults) == len(each.faults) > 4096


@pytest.mark.parametrize("change, words", [
    ({"spans": {"0": [0, 10 ** 9], "1": [0, 0]}}, "trace span of cpu 0"),
    ({"spans": {"0": [-1, 4096], "1": [0, 0]}}, "trace span of cpu 0"),
    ({"spans": {"0": "0+4096", "1": [0, 0]}}, "trace span of cpu 0"),
    ({"spans": {}}, "trace span of cpu 0"),
    ({"files": {"0": "../../etc/passwd", "1": "trace.raw"}}, "is not a file name"),
    ({"formats": ["not", "a", "map"]}, "trace.formats is not a map"),
    ({"formats": {"kvm:kvm_guest_fault": FAULT_FORMAT}}, "no header_page format"),
])
def test_what_l1_says_of_its_trace_file_is_checked(tmp_path, change, words):
    from lab.analysis.ringbuf import TraceFormatError

    info = {**one_file_layout("anon-thp-always", tmp_path), **change}
    with pytest.raises(TraceFormatError, match=re.escape(words)):
        tracefile.load(tmp_path, info)
