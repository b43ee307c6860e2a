"""The pytest plugin for real: inner pytest sessions (pytester) that use `kvm_lab`, boot
L1, run scenarios, and leave no QEMU behind, whatever their tests did."""

from __future__ import annotations

import json

import pytest

from lab.machine.lab import Lab
from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot

INNER = '''
import json, os

def test_measures(kvm_lab):
    result = kvm_lab.run("anon-thp-always")
    assert result.passed and result.regions.blocks == 32, result
    again = kvm_lab.run("anon-thp-always")   # the same scenario twice keeps both runs
    assert again.name == "anon-thp-always-2" and again.regions.faults == 32
    custom = kvm_lab.run({"name": "mine", "l1": {"thp": "never"},
                          "memslots": [{"ipa": "1G", "size": "4M", "backing": "anonymous"}],
                          "guest": {"access": "write"}})
    assert custom.regions.pages == 2 and custom.regions.mappings() == {"page": 2}
    status, out = kvm_lab.exec("cat /sys/kernel/mm/transparent_hugepage/enabled")
    assert status == 0 and "[" in out
    with open(os.environ["KVMLAB_INNER_OUT"], "w") as f:
        json.dump({"pid": kvm_lab.lab.pid(), "results": str(kvm_lab.results)}, f)
'''

FAILING = '''
def test_fails_after_booting(kvm_lab):
    result = kvm_lab.run("anon-thp-always")
    assert result.passed, result
    assert False, "this test fails on purpose"
'''


def _inner(pytester, monkeypatch, tmp_path, source: str, *args: str):
    out = tmp_path / "inner.json"
    monkeypatch.setenv("KVMLAB_INNER_OUT", str(out))
    pytester.makepyfile(source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=600)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_kvm_lab_runs_scenarios_and_goes_down(pytester, monkeypatch, tmp_path, private_runtime):
    result, seen = _inner(pytester, monkeypatch, tmp_path, INNER, "--kvmlab-name", "plugin-a")
    result.assert_outcomes(passed=1)
    assert seen and seen["pid"]
    assert not Lab("plugin-a").is_up()
    assert qemu_pids_in(private_runtime / "labs/plugin-a") == []
    # the session's results are a results directory like any other
    report = kvmlab("report", seen["results"])
    assert report.returncode == 0, report.stdout.decode() + report.stderr.decode()
    assert "anon-thp-always-2" in report.stdout.decode()


def test_a_failing_test_still_takes_the_lab_down(pytester, monkeypatch, tmp_path, private_runtime):
    result, _ = _inner(pytester, monkeypatch, tmp_path, FAILING, "--kvmlab-name", "plugin-b")
    result.assert_outcomes(failed=1)
    # failed where it fails on purpose, after a scenario that passed (not on a scenario's
    # error or timeout: once in CI, the scenario took the host's 300 s timeout unseen)
    result.stdout.fnmatch_lines(["*AssertionError: this test fails on purpose*"])
    assert not Lab("plugin-b").is_up()
    assert qemu_pids_in(private_runtime / "labs/plugin-b") == []


def test_keep_leaves_the_lab_for_the_next_session(pytester, monkeypatch, tmp_path, private_runtime):
    try:
        first, seen1 = _inner(pytester, monkeypatch, tmp_path, INNER, "--kvmlab-name", "plugin-c", "--kvmlab-keep")
        first.assert_outcomes(passed=1)
        assert Lab("plugin-c").is_up()
        second, seen2 = _inner(pytester, monkeypatch, tmp_path, INNER, "--kvmlab-name", "plugin-c")
        second.assert_outcomes(passed=1)
        assert seen2["pid"] == seen1["pid"]  # reused, not rebooted
        assert Lab("plugin-c").is_up()  # a lab the session did not start is left as it was
    finally:
        kvmlab("down", "--name", "plugin-c")
    assert qemu_pids_in(private_runtime / "labs/plugin-c") == []


def test_a_bad_kernel_option_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(kvm_lab):\n    pass\n")
    result = pytester.runpytest_subprocess("--kvmlab-kernel", "woody")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("kvmlab:" in line and "woody" in line for line in result.errlines)
