"""Verdicts on recorded traces: right expectations pass, wrong ones fail and say why."""

import json
from pathlib import Path

import yaml

from lab.analysis import trace as tracefile
from lab.analysis.crash import scan
from lab.analysis.verdict import ERROR, FAIL, PASS, SKIP, evaluate
from lab.scenarios import model

TRACES = Path(__file__).parent.parent / "data" / "traces"
CRASHES = Path(__file__).parent.parent / "data" / "crash"
RELEASE = "6.12.117+deb13-arm64"


def recorded(name, change=None):
    data = yaml.safe_load((TRACES / name / "scenario.yaml").read_text())
    if change:
        change(data)
    scenario = model.parse(data, f"{name}.yaml")
    result = json.loads((TRACES / name / "result.json").read_text())
    return scenario, result, tracefile.load(TRACES / name, result["trace"])


def test_blocks_pass_with_a_verdict_in_words():
    scenario, result, trace = recorded("anon-thp-always", lambda d: d["expect"].pop("smaps"))
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == PASS, v.reasons
    assert v.observed == "32 block (1 fault each)" and v.faults == 32
    assert "64 MiB written: 32/32 regions mapped as 2 MiB block (1 fault each)" in v.reasons


def test_a_wrong_expectation_fails_and_shows_the_evidence():
    scenario, result, trace = recorded("anon-thp-always", lambda d: d["expect"].update(regions=[{"mapping": "page"}]))
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == FAIL
    assert v.reasons[0].startswith("0/32 regions mapped as 4 KiB pages; not: 0x40000000 block (1 fault (1 translation L1))")


def test_phases_and_ranges():
    scenario, result, trace = recorded("dirty-log-after-blocks")
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == PASS, v.reasons
    assert v.observed == "phase 0: 8 block (1 fault each); phase 1: 8 split (512 faults each)"
    scenario, result, trace = recorded("unaligned-head-tail")
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == PASS, v.reasons
    assert v.counts() == {"block": 9, "page": 2}


def test_kernel_conditions_pick_the_expectation():
    def per_kernel(d):
        d["expect"] = {"regions": [{"mapping": "block", "kernels": ">=5.15"}, {"mapping": "page", "kernels": "<5.15"}]}
    scenario, result, trace = recorded("anon-thp-always", per_kernel)
    assert evaluate(scenario, RELEASE, result, trace, None, []).status == PASS
    assert evaluate(scenario, "5.10.0-32-arm64", result, trace, None, []).status == FAIL


def test_lost_events_are_never_a_pass():
    scenario, result, trace = recorded("anon-thp-always", lambda d: d["expect"].pop("smaps"))
    trace.problems.append("cpu1: 12 dropped events")
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == FAIL and v.reasons[0] == "trace incomplete: cpu1: 12 dropped events"


def test_a_crash_in_the_l1_log_fails_the_scenario():
    scenario, result, trace = recorded("anon-thp-always", lambda d: d["expect"].pop("smaps"))
    v = evaluate(scenario, RELEASE, result, trace, None, scan((CRASHES / "warning.log").read_text()))
    assert v.status == FAIL
    assert v.reasons[0] == "L1 log: WARNING at arch/arm64/kvm/mmu.c:1432 user_mem_abort"


def test_smaps_cross_check():
    scenario, result, trace = recorded("anon-thp-always")
    probe = {"smaps": {"end": {"1": {"AnonHugePages": 30 * 1024}}}}
    v = evaluate(scenario, RELEASE, result, trace, probe, [])
    assert v.status == FAIL and "VMM smaps AnonHugePages: 30 MiB (expected 64 MiB-64 MiB)" in v.reasons


def test_skip_error_and_timeout():
    scenario, result, trace = recorded("anon-thp-always")
    assert evaluate(scenario, RELEASE, {"skip": "no 1G pages"}, None, None, []).status == SKIP
    assert evaluate(scenario, RELEASE, {"error": "OSError: boom"}, None, None, []).status == ERROR
    timed_out = {**result, "vmm": {"timeout": "still running after 60 s (the scenario's timeout), killed with SIGKILL", "signal": 9}}
    v = evaluate(scenario, RELEASE, timed_out, trace, None, [])
    assert v.status == ERROR and v.reasons[0] == "timed out: the VMM was still running after 60 s (the scenario's timeout), killed with SIGKILL"
