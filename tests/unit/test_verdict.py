"""Verdicts on recorded traces: right expectations pass, wrong ones fail and say why."""

import json
from pathlib import Path

import pytest
import yaml

from lab.analysis import trace as tracefile
from lab.analysis.crash import scan
from lab.analysis.verdict import evaluate
from lab.core.errors import UserError
from lab.core.status import ERROR, FAIL, NA, PASS, SKIP, count
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


def test_a_scenario_for_other_kernels_or_a_missing_feature_is_na_not_a_skip():
    scenario, result, trace = recorded("anon-thp-always", lambda d: (d.update(kernels=">=6.8"), d["expect"].pop("smaps")))
    v = evaluate(scenario, "6.1.0-40-arm64", result, trace, None, [])
    assert v.status == NA and v.reasons == ["applies to kernels >=6.8; L1 runs 6.1.0-40-arm64"]
    assert evaluate(scenario, RELEASE, result, trace, None, []).status == PASS
    v = evaluate(scenario, RELEASE, {**result, "na": "this kernel has no multi-size THP controls"}, trace, None, [])
    assert v.status == NA and v.reasons == ["this kernel has no multi-size THP controls"]
    v = evaluate(scenario, RELEASE, {**result, "skip": "L1 could reserve only 0 of 1"}, trace, None, [])
    assert v.status == SKIP
    assert count([PASS, NA, SKIP, NA]) == {"pass": 1, "fail": 0, "error": 0, "skip": 1, "n/a": 2}


def test_l0_qemu_conditions_pick_the_expectation():
    def per_l0(d):
        d["expect"] = {"regions": [{"mapping": "block", "qemu": ">=9.0"}, {"mapping": "page", "qemu": "<9.0"}]}
    scenario, result, trace = recorded("anon-thp-always", per_l0)
    assert scenario.regions[0].describe() == "block under QEMU >=9.0"
    assert evaluate(scenario, RELEASE, result, trace, None, [], l0="10.0").status == PASS
    v = evaluate(scenario, RELEASE, result, trace, None, [], l0="7.2")
    assert v.status == FAIL and v.reasons[0].startswith("0/32 regions mapped as 4 KiB pages")


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


# -- stress scenarios (repeat): recorded from configs/suites/stress/exit-mmap-race.yaml on trixie ----
STRESS = Path(__file__).parent.parent.parent / "configs" / "suites" / "stress" / "exit-mmap-race.yaml"


def stress_result(change=None):
    result = json.loads((Path(__file__).parent.parent / "data" / "stress" / "exit-mmap-race-result.json").read_text())
    if change:
        change(result["repeat"])
    return model.load(STRESS), result


def test_a_stress_run_passes_when_every_run_was_killed_faulting_and_the_log_is_clean():
    scenario, result = stress_result()
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == PASS, v.reasons
    assert v.observed.startswith("50 runs killed (") and v.observed.endswith("/s)")
    assert v.reasons[0].startswith("50/50 VMM runs killed mid-run (")
    assert v.faults == sum(r["faults"] for r in result["repeat"]["runs"]) > 50
    assert v.reasons[-1] == "L1 log clean"


def test_a_stress_run_with_a_crash_fails_with_it():
    scenario, result = stress_result()
    v = evaluate(scenario, RELEASE, result, None, None, scan((CRASHES / "oops-null.log").read_text()))
    assert v.status == FAIL and v.reasons[0].startswith("L1 log: Unable to handle kernel NULL pointer")


def test_a_stress_run_whose_vmm_died_by_itself_fails_naming_the_run():
    # As seen on sid's 7.2.13: run 6's VMM died of SIGSEGV, with a WARNING in L1's log.
    def segv(repeat):
        repeat["runs"][5] = {"seconds": 0.085, "signal": 11, "faults": 2}
    scenario, result = stress_result(segv)
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == FAIL
    assert v.reasons[0].startswith("49/50 VMM runs killed mid-run (")
    assert v.reasons[0].endswith("; run 6: the VMM died of signal 11 (SIGSEGV) after 0.09 s")
    crashes = scan((CRASHES / "warning-7x-vcpu-load-debug.log").read_text())
    v = evaluate(scenario, RELEASE, result, None, None, crashes)
    assert v.status == FAIL
    assert v.reasons[0] == "L1 log: WARNING at arch/arm64/kvm/debug.c:157 kvm_vcpu_load_debug"
    assert "kvm_vcpu_load_debug+0x190/0x230" in next(c["text"] for c in v.checks if c["check"] == "clean_log")


def test_a_stress_run_cut_short_is_an_error():
    def short(repeat):
        repeat["runs"] = repeat["runs"][:11]
    scenario, result = stress_result(short)
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == ERROR and v.reasons[0].endswith("L1's runner stopped after 11 runs")


def test_a_stress_run_whose_vcpus_never_faulted_raced_nothing():
    def idle(repeat):
        repeat["runs"][2]["faults"] = 0
    scenario, result = stress_result(idle)
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == FAIL and any("none in run 3" in r for r in v.reasons)


def test_repeat_needs_a_stress_shape():
    data = yaml.safe_load(STRESS.read_text())
    data.pop("kill_after")
    with pytest.raises(UserError, match="repeat: expected 1, unless the scenario is a stress run"):
        model.parse(data, "s.yaml")
    data["kill_after"] = [0.9, 0.3]
    with pytest.raises(UserError, match=r"kill_after: expected .*\[min, max\]"):
        model.parse(data, "s.yaml")


FAULT = ("Fatal Python error: Segmentation fault\n\nThread 0x0000ffff9a1f0120 (most recent call first):\n"
         '  File "/mnt/share/.kvmlab/tools/l1/kvm.py", line 227 in run')


def test_a_vmm_killed_by_a_signal_says_which_and_keeps_its_stacks():
    """A VMM that died of SIGSEGV is an error that names the signal (not "exit status 11")
    and carries the stacks faulthandler wrote in L1, as evidence."""
    scenario = model.parse({"memslots": [{"ipa": "1G", "size": "64M"}]}, "s.yaml")
    result = {"l1_release": RELEASE, "vmm": {"signal": 11, "seconds": 0.34, "fault": FAULT},
              "trace": {"complete": True}}
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == ERROR
    assert v.reasons[0] == "the VMM failed: died of signal 11 (SIGSEGV) after 0.34 s"
    assert v.reasons[1].startswith("the VMM's stacks when it died (vmm-fault.log):\nFatal Python error: Segm")


def test_a_stress_run_that_crashed_keeps_the_first_crash_stacks():
    def crash(repeat):
        repeat["runs"][5] = {"seconds": 0.085, "signal": 11, "faults": 2, "fault": FAULT}

    scenario, result = stress_result(crash)
    v = evaluate(scenario, RELEASE, result, None, None, [])
    assert v.status == FAIL
    assert any(r.startswith("the VMM's stacks when run 6 died:\nFatal Python error") for r in v.reasons)


def test_a_crashed_vmm_says_how_far_it_got():
    from lab.analysis.mapping import Fault

    scenario = model.parse({"memslots": [{"ipa": "1G", "size": "64M"}], "guest": {"pauses": [1], "access": ["write", "write"]}},
                           "s.yaml")
    faults = [Fault(ipa=(1 << 30) + i * 4096, esr=0x93C08007, phase=0 if i < 19 else 1) for i in range(20)]
    trace = tracefile.Trace(events=[], faults=faults, markers=[])
    result = {"l1_release": RELEASE, "vmm": {"signal": 11, "seconds": 0.34}, "trace": {"complete": True}}
    v = evaluate(scenario, RELEASE, result, trace, None, [])
    assert v.status == ERROR
    assert v.reasons[0] == ("the VMM failed: died of signal 11 (SIGSEGV) after 0.34 s, after 20 stage-2 faults "
                            "(the last in phase 1)")


def test_kvms_own_stage2_dump_is_checked_against_the_last_phase_of_each_region():
    scenario, result, trace = recorded("dirty-log-after-blocks")
    pages = "0x0000000040000000-0x0000000041000000          16M 3   R W px ux AF\n"
    blocks = "0x0000000040000000-0x0000000041000000          16M 2   R W px ux AF BLK\n"
    v = evaluate(scenario, RELEASE, result, trace, {"stage2": pages}, [])
    assert v.status == PASS, v.reasons  # blocks in phase 0, pages after the split: pages at the end
    assert "debugfs stage-2: 8 regions as the faults say" in v.reasons
    v = evaluate(scenario, RELEASE, result, trace, {"stage2": blocks}, [])
    assert v.status == FAIL and v.reasons[0].startswith("debugfs stage-2: 0 regions as the faults say; differ: "
                                                        "0x40000000 dump block, faults split")


def test_a_16k_l1_is_judged_in_32m_regions_and_a_4k_scenario_is_na_there():
    scenario, result, trace = recorded("hugetlb-1g-contpmd-16k")
    v = evaluate(scenario, "7.2.13+deb14-arm64-16k", result, trace, None, [])
    assert v.status == PASS, v.reasons
    assert v.observed == "4 block (1 fault each)" and v.faults == 4
    assert "128 MiB written: 4/4 regions mapped as 32 MiB block (1 fault each)" in v.reasons
    assert {r.size for r in v.regions.values()} == {32 << 20}
    # the same trace read as if L1 had 4 KiB pages: 64 regions of 2 MiB, 60 of them never faulted
    old = evaluate(scenario, "7.2.13+deb14-arm64-16k", {**result, "l1_page_size": 4096}, trace, None, [])
    assert old.status == FAIL and len(old.regions) == 64
    # L1 reports a scenario written for 4 KiB pages n/a on a 16 KiB kernel (images/l1/python/l1/scenario.py)
    na = evaluate(scenario, "7.2.13+deb14-arm64-16k",
                  {"na": "its expectations are written for 4 KiB pages; L1's kernel has 16 KiB pages"}, None, None, [])
    assert na.status == NA


def test_granules_are_checked_page_sizes():
    assert model.parse({"granules": ["4K", "16K"], "memslots": [{"ipa": "1G", "size": "64M", "backing": "anonymous"}]},
                       "g.yaml").granules == [4096, 16384]
    assert model.parse({"memslots": [{"ipa": "1G", "size": "64M", "backing": "anonymous"}]}, "g.yaml").granules == [4096]
    for bad in (["8K"], [], "16K", [True]):
        with pytest.raises(UserError, match="granules.*L1 page sizes: 4K, 16K or 64K"):
            model.parse({"granules": bad, "memslots": [{"ipa": "1G", "size": "64M", "backing": "anonymous"}]}, "g.yaml")


def test_move_pages_with_one_numa_node_is_a_skip_saying_why():
    scenario, result, trace = recorded("anon-thp-always")
    why = "L1 has one NUMA node (0): there is nowhere to move the pages (lab.numa_nodes: 2 gives two)"
    probe = {"mm": [{"at": "pause 1", "do": "move_pages", "pieces": [{"moved": False, "why": why}]}]}
    v = evaluate(scenario, RELEASE, result, trace, probe, [])
    assert (v.status, v.reasons) == (SKIP, [why])
    probe["mm"][0]["pieces"][0].update(moved=True)
    assert evaluate(scenario, RELEASE, result, trace, probe, []).status != SKIP


@pytest.mark.parametrize("content, words", [
    (b'{"started": 1, "seconds"', "result.json that is not JSON"),      # cut short
    (b"\xff\xfe", "result.json that is not JSON"),
    (b'["a", "list"]', "result.json that is not a JSON object but a list"),
])
def test_a_result_l1_left_unreadable_is_an_error_with_the_reason(tmp_path, content, words):
    # What L1 writes is untrusted: a result.json cut short or of another shape is the
    # scenario's error, said as such, not the suite's crash.
    from lab.scenarios.staging import l1_json

    (tmp_path / "result.json").write_bytes(content)
    data, problem = l1_json(tmp_path / "result.json")
    assert data is None and problem is not None and words in problem
    (tmp_path / "result.json").write_text('{"seconds": 1.5}')
    assert l1_json(tmp_path / "result.json") == ({"seconds": 1.5}, None)


@pytest.mark.parametrize("vmm, expected", [
    ({"timeout": "still running after 12 s (...), killed with SIGKILL", "signal": 9}, None),
    ({"killed": "SIGKILL 1.50 s after its first stage-2 fault", "signal": 9}, None),
    ({"exit_code": 0}, "probe.json that is not JSON"),  # it ended by itself: a report cut short is an error
])
def test_a_probe_report_cut_short_by_the_runners_kill_is_no_report(tmp_path, vmm, expected):
    # The VMM writes probe.json in place as it ends; L1's runner may kill it in that write
    # (its timeout reached just as the probe gave up too): then there is no report, not a
    # broken one, and the scenario's reason stays the timeout or the kill.
    from lab.scenarios.staging import l1_reports

    (tmp_path / "result.json").write_text(json.dumps({"vmm": vmm}))
    (tmp_path / "probe.json").write_bytes(b"")
    result, probe, problem = l1_reports(tmp_path)
    assert result == {"vmm": vmm} and probe is None
    assert (problem is None) if expected is None else (expected in problem)
    (tmp_path / "result.json").write_bytes(b'{"vmm":')  # the runner's own report is never excused
    assert "result.json that is not JSON" in l1_reports(tmp_path)[2]
