"""Retried faults (lab/analysis/retry.py) on hand-made traces: a repeat is discounted only
with an invalidation in the right window, per vCPU thread, and only on kernels < 5.13."""

from lab.analysis import retry
from lab.analysis.esr import Esr
from lab.analysis.trace import Trace
from lab.analysis.verdict import evaluate
from lab.core.status import FAIL, PASS
from lab.scenarios import model

ms = 1_000_000


def fault(ipa, ts, tid=100, phase=0, esr=None):
    from lab.analysis.mapping import Fault

    return Fault(ipa, esr if esr is not None else 0x92000046, ts * ms, 0, phase, 0x40080124, tid)


def test_the_syndrome_is_a_level_2_translation_write():
    d = Esr(0x92000046)
    assert (d.kind, d.level, bool(d.write)) == ("translation", 2, True)


def test_a_repeat_after_an_invalidation_is_a_retry():
    faults = [fault(0x40000000, 1), fault(0x40200000, 2), fault(0x40200000, 7), fault(0x40200000, 8)]
    marked = retry.mark(faults, [int(3 * ms)])
    assert [f.retry for f in marked] == [False, False, True, True]


def test_a_repeat_without_an_invalidation_counts():
    faults = [fault(0x40000000, 1), fault(0x40200000, 2), fault(0x40200000, 7)]
    assert not any(f.retry for f in retry.mark(faults, [int(0.5 * ms), int(9 * ms)]))


def test_an_invalidation_before_the_last_success_explains_nothing():
    # the fault at 1 ms succeeded after the invalidation at 0.5 ms began: it had ended
    faults = [fault(0x40000000, 1), fault(0x40200000, 2), fault(0x40200000, 7)]
    assert not any(f.retry for f in retry.mark(faults, [int(0.5 * ms)]))


def test_the_first_fault_of_a_thread_is_never_a_retry_and_threads_do_not_chain():
    # two vCPUs racing on one page each fault once: neither is the other's retry
    faults = [fault(0x40200000, 1, tid=100), fault(0x40200000, 2, tid=101)]
    assert not any(f.retry for f in retry.mark(faults, [int(1.5 * ms)]))


def test_a_new_phase_or_another_syndrome_is_a_new_fault():
    faults = [fault(0x40200000, 1), fault(0x40200000, 3, phase=1), fault(0x40200000, 5, phase=1, esr=0x9200004E)]
    assert not any(f.retry for f in retry.mark(faults, [int(2 * ms), int(4 * ms)]))


def scenario():
    return model.parse({"description": "one region, a block", "memslots": [{"ipa": "1G", "size": "2M"}],
                        "guest": {"access": "write"},
                        "expect": {"regions": [{"mapping": "block", "faults": [1, 2]}]}}, "one.yaml")


def judged(release, unmaps):
    faults = [fault(0x40000000, 1), fault(0x40000000, 6), fault(0x40000000, 7)]
    trace = Trace([], faults, [], [], 0, unmaps)
    return evaluate(scenario(), release, {"vmm": {"exit_code": 0}}, trace, None, [])


def test_on_5_10_retries_are_shown_and_not_held_against_the_bound():
    v = judged("5.10.0-39-arm64", [int(3 * ms)])
    assert v.status == PASS, v.reasons
    assert "1/1 regions mapped as 2 MiB block (1 fault each) (+2 retried after an mm invalidation, not counted)" \
        in v.reasons[0]


def test_from_5_13_the_same_trace_fails():
    v = judged("6.12.117+deb13-arm64", [int(3 * ms)])
    assert v.status == FAIL
    assert "3 faults (3 translation L2)" in v.reasons[0]


def test_on_5_10_without_an_invalidation_the_repeats_fail():
    v = judged("5.10.0-39-arm64", [])
    assert v.status == FAIL and "retried" not in v.reasons[0]
