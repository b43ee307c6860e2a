"""Trace losslessness: 131,072 stage-2 faults captured with none lost and the exact count
(configs/suites/trace/exact-faults; its 1,048,576-fault sibling million-faults takes minutes under
TCG and is run by `scripts/soak --runs 1 --kernels trixie trace`); a ring buffer too small
for the scenario is reported as lost events, never a pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

EXACT = 65_536 * 2  # 256 MiB of 4 KiB pages, written in two passes


def test_every_fault_is_captured_exactly(kvm_lab):
    result = kvm_lab.run("exact-faults")
    assert result.passed, result
    assert result.faults == EXACT
    # Every CPU's ring buffer says it dropped nothing, and the host decoded what it counted.
    verdict = json.loads((Path(result.artefacts) / "verdict.json").read_text())
    run = json.loads((Path(result.artefacts) / "result.json").read_text())
    stats = run["trace"]["stats"]
    assert sum(int(s["entries"]) for s in stats.values()) >= EXACT
    assert all(int(s["overrun"]) == 0 and int(s.get("dropped_events", 0)) == 0 for s in stats.values())
    assert verdict["timings"]["events"] >= EXACT
    # 2 faults on every page of every one of the 128 regions: 1024 per 2 MiB region.
    assert len(result.regions) == 128
    assert {r["faults"] for r in result.regions} == {1024}
    events_per_second = verdict["timings"]["events"] / max(verdict["timings"]["l1"], 1e-9)
    print(f"{verdict['timings']['events']} events in {verdict['timings']['l1']:.1f} s in L1 "
          f"({events_per_second:.0f}/s); trace dump {verdict['timings']['trace_dump']:.1f} s")


def test_an_undersized_trace_buffer_is_lost_events_never_a_pass(kvm_lab):
    # 8192 faults (~400 KiB of events) into 16 KiB per CPU.
    result = kvm_lab.run("anon-thp-never", trace_buffer_kb=16)
    assert result.status == "fail", result
    assert result.reasons[0].startswith("trace incomplete: "), result.reasons
    assert "lost" in result.reasons[0] or "dropped" in result.reasons[0], result.reasons
    # The same scenario with the buffer kvmlab sizes itself passes: the loss was the buffer's.
    assert kvm_lab.run("anon-thp-never").passed
