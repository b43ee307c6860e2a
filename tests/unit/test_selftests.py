"""`kvmlab selftests`' data and judgement without a lab: the selection and known-results
files (the shipped ones, and bad ones: one line each), the plan of runs, the causes
checked against L1's facts, the known result a run is judged against, and where a test's
memory is, read from output recorded in L1."""

from pathlib import Path

import pytest

from lab.core.errors import UserError
from lab.core.status import FAIL, PASS, SKIP, XFAIL
from lab.selftests import judge
from lab.selftests import run as st
from lab.selftests import selection as sel

DATA = Path(__file__).resolve().parent.parent / "data" / "selftests"
FACTS = judge.L1Facts(features={"fp", "asimd", "sve", "atomics"}, mem_mib=1969,
                   config={"CONFIG_KVM": "y", "CONFIG_IDLE_PAGE_TRACKING": "n"}, config_source="config")


def test_the_shipped_selection_and_known_results_load():
    selection = sel.load_selection()
    assert selection.backings == ["anonymous", "anonymous_thp", "anonymous_hugetlb_2mb"]
    runs = st.plan(selection, [], None, None, False)
    assert len({r.test.name for r in runs}) >= 25
    for path in sorted(sel.KNOWN_DIR.glob("*.yaml")):
        known = sel.load_known(path.stem)
        assert known.tests, path
        for name in known.tests:
            assert name in selection.tests, f"{path}: {name} is not in the selection"


def test_plan_runs_a_backing_test_once_per_backing():
    selection = sel.load_selection()
    runs = st.plan(selection, ["demand_paging_test", "hypercalls"], None, ["anonymous", "anonymous_thp"], False)
    assert [r.name for r in runs] == ["demand_paging_test[anonymous]", "demand_paging_test[anonymous_thp]",
                                      "hypercalls"]
    assert runs[1].test.argv("anonymous_thp")[-2:] == ["-s", "anonymous_thp"]
    assert not any(r.test.name == "rseq_test" for r in st.plan(selection, [], None, None, False))
    assert any(r.test.name == "rseq_test" for r in st.plan(selection, [], None, None, True))
    assert [r.name for r in st.plan(selection, [], "vgic_i*", None, False)] == ["vgic_init", "vgic_irq"]
    with pytest.raises(UserError, match="no_such_test: not a test of"):
        st.plan(selection, ["no_such_test"], None, None, False)


def write(tmp_path, text):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("tests: {a: {argz: '-b 1M'}}", "tests.a.argz: unknown key"),
    ("tests: {a: {timeout: 0}}", "tests.a.timeout: expected"),
    ("tests: {a: {args: ['-b']}}", "tests.a.args: expected the test's arguments as one string"),
    ("tests: {a: {args: \"'unclosed\"}}", "tests.a.args: expected arguments a shell would split"),
    ("tests: {a: {backing: true, memory: memstress, expect: {anonymous: huge}}}", "tests.a.expect.anonymous"),
    ("tests: {a: {backing: true, expect: {anonymous: block}}}", "tests.a.memory: expected memstress or page_table"),
    ("tests: {a: {memory: memstress, expect: {anonymous: block}}}", "tests.a.backing: expected true"),
    ("backings: [anonymous, tmpfs]", "backings: expected backing types"),
    ("tests: {}", "tests: no tests listed"),
    ("tests: {'a b': {}}", "tests: expected a test's name"),
    ("base: &b {}\ntests: {a: *b}", "a YAML alias"),
])
def test_a_bad_selection_is_one_line(tmp_path, text, message):
    with pytest.raises(UserError) as exc:
        sel.load_selection(write(tmp_path, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(tmp_path / "f.yaml") in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("tests: {a: {status: fail}}", "tests.a.cause: expected a cause"),
    ("tests: {a: {status: broken}}", "tests.a.status: expected one of pass, skip, fail"),
    ("tests: {a: {status: skip, cause: {kconfig: IDLE}}}", "tests.a.cause.kconfig: expected a config option"),
    ("tests: {a: {status: skip, cause: {output: '(unclosed'}}}", "tests.a.cause.output: expected a valid regular"),
    ("tests: {a: {status: skip, cause: {kconfig: CONFIG_A, memory: 4G}}}", "tests.a.cause: expected one cause"),
    ("tests: {a: {status: skip, cause: {weather: rain}}}", "tests.a.cause.weather: unknown key"),
])
def test_a_bad_known_results_file_is_one_line(tmp_path, text, message):
    with pytest.raises(UserError) as exc:
        sel.load_known("k", write(tmp_path, text))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_kernel_without_a_known_results_file_expects_passes():
    known = sel.load_known("no-such-kernel")
    assert known.path is None and known.of("vgic_init", None).status == PASS


def test_known_results_per_backing(tmp_path):
    known = sel.load_known("k", write(tmp_path, """
tests:
  demand_paging_test:
    - {backing: anonymous_hugetlb_2mb, status: skip, cause: {memory: 8G}}
"""))
    assert known.of("demand_paging_test", "anonymous_hugetlb_2mb").status == SKIP
    assert known.of("demand_paging_test", "anonymous").status == PASS


@pytest.mark.parametrize("cause, holds", [
    ({"kconfig": "CONFIG_IDLE_PAGE_TRACKING"}, True),
    ({"kconfig": "CONFIG_NOT_IN_THE_FILE"}, True),
    ({"kconfig": "CONFIG_KVM"}, False),
    ({"cpu_lacks": "sme"}, True),
    ({"cpu_lacks": "sve"}, False),
    ({"memory": "4G"}, True),
    ({"memory": "1G"}, False),
    ({"output": "Requirement not met: vcpu_aarch64_only"}, True),
    ({"output": "KVM killed"}, False),
])
def test_a_cause_is_checked_against_l1(tmp_path, cause, holds):
    import yaml

    known = sel.load_known("k", write(tmp_path, yaml.safe_dump({"tests": {"t": {"status": "skip", "cause": cause}}})))
    output = (DATA / "aarch32_id_regs.log").read_text()
    assert judge.cause_holds(known.of("t", None), FACTS, output)[0] is holds


def judged(known: sel.Known, observed: str, output: str = "") -> tuple[str, list[str]]:
    reasons: list[str] = []
    results = sel.KnownResults(Path("known/k.yaml"), "k")
    return judge.against_known(observed, known, results, FACTS, output, reasons), reasons


def test_judged_against_the_known_results():
    untrue = sel.Known("skip", sel.Cause("kconfig", "CONFIG_KVM"))
    assert judged(sel.Known("pass"), PASS)[0] == PASS
    status, reasons = judged(sel.Known("pass"), FAIL)
    assert status == FAIL and "REGRESSION: known to pass on k" in reasons
    assert judged(sel.Known("pass"), SKIP)[0] == FAIL  # a test that stopped running is a regression too
    failing = sel.Known("fail", sel.Cause("output", "KVM killed/bugged"))
    vgic = (DATA / "vgic_init.log").read_text()
    assert judged(failing, FAIL, vgic)[0] == XFAIL
    status, reasons = judged(failing, PASS, vgic)
    assert status == FAIL and "out of date" in reasons[-1]
    status, reasons = judged(untrue, SKIP)
    assert status == FAIL and "the known cause on k is untrue here" in reasons[0]
    assert judged(sel.Known("fail", sel.Cause("output", "KVM killed/bugged")), FAIL, "other failure")[0] == FAIL


def test_memory_windows_from_recorded_output():
    """Run in every guest mode, demand_paging_test printed 13 ranges; VMs of one IPA size
    reuse theirs: 4 distinct (IPA sizes 52, 48, 40, 36), each 32 MiB and 2 MiB-aligned (memstress aligns to the THP)."""
    selection = sel.load_selection()
    text = (DATA / "demand_paging_test-anonymous_thp.log").read_text()
    windows = judge.memory_windows(selection.tests["demand_paging_test"], text)
    assert len(windows) == 4 and windows[-1] == (0xffffffde00000, 0xfffffffe00000)
    assert all(lo % (2 << 20) == 0 and hi - lo == 32 << 20 for lo, hi in windows)
    pt = "Guest physical test memory offset: 0xffffbff000000\nTesting memory size(aligned): 0x1000000\n"
    assert judge.memory_windows(selection.tests["kvm_page_table_test"], pt) == [(0xffffbff000000, 0xffffc00000000)]
    assert judge.memory_windows(selection.tests["kvm_page_table_test"], "nothing printed") == []


def test_memory_windows_of_a_510_memstress_test_come_from_its_arguments():
    """perf_test_util before 5.17 printed the start only: the size is -b times -v."""
    test = sel.Test("demand_paging_test", args=["-b", "32M", "-v", "2"], memory="memstress")
    text = "guest physical test memory offset: 0xffbfe00000\n"
    assert judge.memory_windows(test, text) == [(0xffbfe00000, 0xffbfe00000 + (64 << 20))]


def test_a_pinned_debian_kernel_takes_its_suites_known_results():
    assert sel.load_known("sid-7.2.13-1").path == sel.known_path("sid")
    assert sel.load_known("image-Image-abc").path is None
