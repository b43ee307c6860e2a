"""`kvmlab test thp` on the default kernel, for real: every scenario passes, on a lab
restored from its snapshot, the results are complete, and a wrong expectation fails the run."""

from __future__ import annotations

import json
import secrets
import xml.etree.ElementTree as ET

import pytest
import xmlschema
import yaml

from lab.scenarios import model, suites
from tests.conftest import kvmlab, qemu_pids_in
from tests.integration.test_report_browser import check_rendered
from tests.unit.test_results import SCHEMA

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def lab(kvm_lab):
    """The session's lab: kvmlab's pytest plugin brings it up once and down at the end."""
    return kvm_lab.name


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def restored_lab(tmp_path_factory, private_runtime):
    """A lab restored from a snapshot of its own (`up --snapshot` twice: saved, restored),
    so that the one whole run of the suite also shows that a restored L1 is a working
    KVM host (test_snapshot.py checks the rest of a restore)."""
    config = tmp_path_factory.mktemp("thp-snap") / "lab.yaml"
    config.write_text(f"qemu:\n  append: kvmlab.test={secrets.token_hex(6)}\n")
    name = "thp-restored"
    try:
        for how in ("booted, snapshot saved", "restored from its snapshot"):
            kvmlab("down", "--name", name)
            up = kvmlab("up", "--name", name, "-c", str(config), "--snapshot")
            assert up.returncode == 0 and how in up.stdout.decode(), (up.stdout + up.stderr).decode()
        yield name
    finally:
        kvmlab("down", "--name", name)
        assert qemu_pids_in(private_runtime / "labs" / name) == []
        from lab.machine import snapshot

        for snap in snapshot.all_snapshots():  # this run's own: its key has the unique append
            if config.read_text().split("=")[1].strip() in json.dumps((snap.meta() or {}).get("inputs", {})):
                snapshot.discard(snap)


@pytest.fixture(scope="module")
def suite(restored_lab, outputs, tmp_path_factory):
    """`kvmlab test thp`, as a user runs it, with every report asked for, on a restored lab
    and (-j 2) a helper lab beside it: CI's time (test_concurrency.py checks that -j 2
    gives the verdicts of one lab)."""
    results = tmp_path_factory.mktemp("results")
    run = kvmlab("test", "thp", "-j", "2", "--name", restored_lab, "--results", str(results),
                 "--html", str(outputs / "html"),
                 "--junit", str(outputs / "junit.xml"), "--json", str(outputs / "run.json"), timeout=900)
    summary_file = next(results.glob("*/summary.json"))
    return run, json.loads(summary_file.read_text()), summary_file.parent


def test_every_thp_scenario_passes(suite):
    run, summary, _ = suite
    assert run.returncode == 0, run.stdout.decode()[-3000:]
    names = {s.name for s in suites.resolve(["thp"])}
    assert {s["name"] for s in summary["scenarios"]} == names
    # Nothing skipped on the default lab (its 1 GiB page is reserved at boot); n/a only
    # where trixie's 6.12 lacks the feature: its KVM has no guest_memfd.
    bad = {s["name"]: s["reasons"] for s in summary["scenarios"] if s["status"] not in ("pass", "n/a")}
    assert bad == {}
    na = {s["name"]: s["reasons"] for s in summary["scenarios"] if s["status"] == "n/a"}
    assert na == {"guest-memfd": ["this kernel's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0)"]}
    assert summary["counts"] == {"pass": len(names) - 1, "fail": 0, "error": 0, "skip": 0, "n/a": 1}


def test_results_are_complete(suite):
    _, summary, results = suite
    assert summary["release"].startswith("6.12.") and summary["kvm_mode"] == "VHE"
    assert "QEMU emulator version" in summary["qemu_version"]
    assert (results / "l1-console.log").stat().st_size > 0
    for s in summary["scenarios"]:
        d = results / s["name"]
        assert (d / "verdict.json").exists()
        if s["status"] != "pass":
            continue
        # A scenario compared under two THP modes keeps one run directory per mode.
        runs = [d] if (d / "result.json").exists() else sorted(p for p in d.iterdir() if p.is_dir())
        assert runs
        for r in runs:
            assert (r / "l1.log").exists()
            result = json.loads((r / "result.json").read_text())
            # every CPU's raw pages in one file (trace.raw), where result.json's spans say,
            # and the event formats in result.json
            spans = result["trace"]["spans"]
            assert set(result["trace"]["files"].values()) == {"trace.raw"} and set(spans) == set(result["trace"]["files"])
            assert sum(length for _, length in spans.values()) == (r / "trace.raw").stat().st_size > 0
            assert "kvm:kvm_guest_fault" in result["trace"]["formats"] and (r / "job.json").exists()
            assert not list(r.glob("cpu*.raw")) and not (r / "formats.json").exists()


def test_reports_of_the_run(suite, outputs, tmp_path):
    """The HTML report renders every scenario in Chromium, with every picture; JUnit
    validates against the reporters' schema and agrees with the summary."""
    _, summary, _ = suite
    names = [s["name"] for s in summary["scenarios"]]
    check_rendered(outputs / "html/index.html", names, tmp_path)
    figures = {p.name for p in (outputs / "html/figures").iterdir()}
    assert "anon-thp-always-map.png" in figures and "qemu-migration-dirty-log-1-map.png" in figures
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(outputs / "junit.xml"))
    suite_element = ET.parse(outputs / "junit.xml").getroot().find("testsuite")
    assert int(suite_element.get("tests")) == len(names)
    assert int(suite_element.get("skipped")) == summary["counts"]["skip"] + summary["counts"].get("n/a", 0)
    document = json.loads((outputs / "run.json").read_text())
    always = next(s for s in document["scenarios"] if s["name"] == "anon-thp-always")
    assert [r["mapping"] for r in always["regions"]] == ["block"] * 32


def test_verdicts_carry_their_evidence(suite):
    _, summary, _ = suite
    by_name = {s["name"]: s for s in summary["scenarios"]}
    always = by_name["anon-thp-always"]
    assert always["observed"] == "32 block (1 fault each)" and always["faults"] == 32
    assert "64 MiB written: 32/32 regions mapped as 2 MiB block (1 fault each)" in always["reasons"]
    assert by_name["anon-thp-never"]["counts"] == {"page": 16}
    assert by_name["l2-linux-thp"]["status"] == "pass"
    # L1's mm at work: the folios behind the memslot, and what the MMU notifier unmapped
    assert "VMM folios: 256 × 64 KiB" in by_name["mthp-64k-only"]["reasons"]
    assert "pause 1 (collapse): the MMU notifier unmapped 16 MiB of memslot 1 in 8 ranges" \
        in by_name["collapse-between-passes"]["reasons"]
    assert "pause 1 (compact): the MMU notifier unmapped nothing of memslot 1" in by_name["compact-mid-run"]["reasons"]
    assert by_name["hugetlb-1g"]["observed"].startswith("32 block-1g")
    # device memory (the lab's PCI BAR, VM_PFNMAP): 6.12 maps it page by page
    assert by_name["pfnmap-pci-bar"]["observed"] == "8 page (512 faults each)"


def test_a_wrong_expectation_fails_the_run(lab, tmp_path):
    data = yaml.safe_load((suites.suites()["thp"] / "anon-thp-always.yaml").read_text())
    data["name"] = "wrong-expectation"
    data["expect"] = {"regions": [{"mapping": "page"}]}
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(data))
    run = kvmlab("test", str(path), "--name", lab, "--results", str(tmp_path / "r"))
    assert run.returncode == 1
    out = run.stdout.decode()
    assert "FAIL  wrong-expectation  32 block (1 fault each)" in out
    assert "0/32 regions mapped as 4 KiB pages; not: 0x40000000 block" in out


def test_bad_scenario_is_exit_2_and_one_line(lab, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("memslots: [{ipa: 1G, size: 64M, backing: swap}]\n")
    run = kvmlab("test", str(path), "--name", lab, "--results", str(tmp_path / "r"))
    assert run.returncode == 2
    err = run.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "bad.yaml: memslots[0].backing: expected one of anonymous" in err[0]
    assert not (tmp_path / "r").exists()


def test_list_and_keyword(lab):
    listed = kvmlab("test", "--list").stdout.decode()
    assert "thp (" in listed and "anon-thp-always" in listed
    assert kvmlab("test", "thp", "-k", "no-such-scenario", "--name", lab).returncode == 2


def test_trace_any_command(lab, tmp_path):
    run = kvmlab("trace", "--name", lab, "--analyze", "--results", str(tmp_path), "--",
                 "sh", "-c", "echo reproducer; exit 3")
    assert run.returncode == 3
    out = run.stdout.decode()
    assert "reproducer" in out and "0 events recorded" in out
    assert list(tmp_path.glob("*/trace/trace.raw"))


def test_trace_reports_lost_events(lab, tmp_path):
    # A 64 KiB buffer per CPU cannot hold the faults of 32 MiB of 4 KiB pages.
    from lab.builder import payload
    from lab.builder.build import Builder

    blob, offset = Builder().tools().payload("touch.bin")
    (tmp_path / "touch.bin").write_bytes(payload.patched(blob, offset, payload.TouchParams(1 << 30, 32 << 20)))
    assert kvmlab("cp", "--name", lab, str(tmp_path / "touch.bin"), ":/root/touch.bin").returncode == 0
    job = {"vcpus": 1, "code_ipa": model.PROBE_CODE_IPA, "payload": "/root/touch.bin",
           "memslots": [{"slot": 1, "ipa": 1 << 30, "size": 32 << 20, "backing": "anonymous_nothp"}],
           "report": "/tmp/probe.json", "timeout": 60}
    script = tmp_path / "job.json"
    script.write_text(json.dumps(job))
    assert kvmlab("cp", "--name", lab, str(script), ":/root/job.json").returncode == 0
    run = kvmlab("trace", "--name", lab, "--buffer-kb", "64", "--results", str(tmp_path), "--",
                 "sh", "-c", "cd /mnt/share/.kvmlab/tools && python3 -m l1.probe /root/job.json")
    assert run.returncode == 1, run.stdout.decode() + run.stderr.decode()
    assert "trace incomplete" in run.stderr.decode()


def test_the_more_suite_passes(lab, tmp_path):
    # Scenarios kept out of the default suite for its time budget (hugetlbfs + prealloc in
    # L1's QEMU costs ~5 s).
    run = kvmlab("test", "more", "--name", lab, "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout.decode()[-2000:]
    assert "PASS  qemu-hugetlbfs-prealloc  8 block (1 fault each)" in run.stdout.decode()
