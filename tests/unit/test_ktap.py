"""The selftest judge (lab/analysis/ktap.py) on output recorded in L1 (tests/data/selftests/,
trixie 6.12.117 under QEMU 10.0) and on hand-made TAP: a crash in the middle of a test,
a bail-out, a "not ok", skips."""

from pathlib import Path

import pytest

from lab.analysis import ktap
from lab.core.status import FAIL, PASS, SKIP

DATA = Path(__file__).resolve().parent.parent / "data" / "selftests"


def recorded(name: str) -> str:
    return (DATA / f"{name}.log").read_text()


def test_a_recorded_tap_run_that_passed():
    out = ktap.judge(recorded("kvm_binary_stats_test"), 0)
    assert out.status == PASS
    assert out.tap.plan == 4 and [c.name for c in out.tap.cases] == ["vm0", "vm1", "vm2", "vm3"]
    assert out.tap.totals == (4, 0, 0, 0, 0, 0)
    assert out.reason == "exit 0: 4 cases ok"


def test_a_recorded_assertion_in_the_middle_of_the_plan():
    """set_id_regs asserted after 56 of its 87 cases and exited 254."""
    out = ktap.judge(recorded("set_id_regs"), 254)
    assert out.status == FAIL
    assert out.tap.plan == 87 and len(out.tap.cases) == 56 and out.tap.missing == 31
    assert "after 56 of 87 cases" in out.reason
    assert "set_id_regs.c:434" in out.reason
    assert "addr2line" not in out.reason


def test_a_recorded_skip_with_a_reason():
    out = ktap.judge(recorded("access_tracking_perf_test-anonymous"), 4)
    assert out.status == SKIP
    assert "CONFIG_IDLE_PAGE_TRACKING is not enabled" in out.reason
    out = ktap.judge(recorded("aarch32_id_regs"), 4)
    assert out.status == SKIP and "vcpu_aarch64_only" in out.reason


def test_a_recorded_plain_text_test():
    """demand_paging_test prints no TAP: its exit status decides."""
    text = recorded("demand_paging_test-anonymous_thp")
    assert not ktap.parse(text).is_tap
    assert ktap.judge(text, 0).status == PASS
    assert ktap.judge(text, 254).status == FAIL


def test_a_recorded_library_assertion_is_the_reason():
    out = ktap.judge(recorded("vgic_init"), 254)
    assert out.status == FAIL
    assert out.reason.startswith("exit 254: lib/kvm_util.c:724")
    assert "KVM killed/bugged the VM" in " ".join(out.tap.assertion)


def test_exit_0_with_cases_missing_is_a_failure():
    """A test whose process ended early but said 0 (a crash caught and ignored)."""
    text = "TAP version 13\n1..5\nok 1 a\nok 2 b\n"
    out = ktap.judge(text, 0)
    assert out.status == FAIL and "only 2 of the 5 planned cases" in out.reason


def test_killed_by_a_signal_mid_test():
    text = "TAP version 13\n1..5\nok 1 a\nok 2 b\n"
    out = ktap.judge(text, None, signal=11)
    assert out.status == FAIL and out.reason == "killed by SIGSEGV after 2 of 5 cases"


def test_a_timeout_is_a_failure_and_says_how_far_it_got():
    out = ktap.judge("TAP version 13\n1..3\nok 1 a\n", None, signal=9, timeout=30)
    assert out.status == FAIL
    assert out.reason == "ran past its timeout of 30 s and was killed, 1 of 3 cases reported"


def test_not_ok_fails_even_with_exit_0():
    text = "TAP version 13\n1..2\nok 1 a\nnot ok 2 b # timer did not fire\n"
    out = ktap.judge(text, 0)
    assert out.status == FAIL and "case 2 (b) not ok" in out.reason


def test_skip_and_todo_directives():
    text = "KTAP version 1\n1..3\nok 1 a\nok 2 b # SKIP no SVE\nnot ok 3 c # TODO later\n"
    tap = ktap.parse(text)
    assert [c.status for c in tap.cases] == [PASS, SKIP, PASS]
    assert tap.cases[1].reason == "no SVE"
    out = ktap.judge(text, 0)
    assert out.status == PASS and out.reason == "exit 0: 2 cases ok, 1 skipped"
    every = ktap.judge("TAP version 13\n1..1\nok 1 a # SKIP no PMU\n", 0)
    assert every.status == SKIP and "no PMU" in every.reason


def test_bail_out_fails():
    out = ktap.judge("TAP version 13\n1..4\nok 1 a\nBail out! no /dev/kvm\n", 0)
    assert out.status == FAIL and out.reason == "bailed out: no /dev/kvm"


def test_nested_ktap_subtests_are_not_judged_at_the_top():
    text = "KTAP version 1\n1..1\n    KTAP version 1\n    1..2\n    not ok 1 inner\n    ok 2 inner2\nok 1 outer\n"
    tap = ktap.parse(text)
    assert tap.plan == 1 and [c.name for c in tap.cases] == ["outer"]
    assert ktap.judge(text, 0).status == PASS


@pytest.mark.parametrize("code", [1, 2, 254, 255])
def test_any_other_exit_status_fails(code):
    assert ktap.judge("some output\n", code).status == FAIL


def test_exit_4_without_a_reason_still_says_something():
    out = ktap.judge("", 4)
    assert out.status == SKIP and out.reason == "exit 4 (KSFT_SKIP), no reason printed"


def test_a_test_that_refused_its_arguments_did_not_run():
    """5.10's demand_paging_test has no -s: it printed its usage and exited 0 (recorded)."""
    text = "/run/kvmlab/selftests-x/demand_paging_test: invalid option -- 's'\n\nusage: demand_paging_test [-h]\n"
    out = ktap.judge(text, 0)
    assert out.status == FAIL
    assert out.reason == "it refused its arguments (invalid option -- 's') and did not run (exit 0)"
    assert ktap.judge("arch_timer: invalid option -- 'e'\nUsage: ...\n", 4).status == FAIL
