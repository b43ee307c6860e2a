"""`kvmlab up --kvm-mode` / `--nested` on the real kernels: a mode the kernel cannot give is
refused before anything boots; sid's 7.x under QEMU 10 comes up nested (NV2)
(FIELD-NOTES §6: "VHE+NV2 mode initialized successfully"), and on it kvmlab's guest
hypervisor runs L3 under its own stage-2: the shadow stage-2 KVM builds follows L2's leaf
size (configs/suites/nested/), and an expectation that ignores L2's leaf fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SID, kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot
ROOT = Path(__file__).resolve().parent.parent.parent


def test_nested_on_a_kernel_older_than_6_16_is_refused_before_boot(private_runtime):
    result = kvmlab("up", "--name", "nv-old", "--nested", "--kernel", "trixie")
    err = result.stderr.decode().strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1, err
    assert "lab.kvm_mode nested: L1's kernel is 6.12." in err and "older than 6.16" in err
    assert qemu_pids_in(private_runtime / "labs/nv-old") == []


@pytest.fixture(scope="module")
def nested_lab(private_runtime):
    up = kvmlab("up", "--name", "nv", "--nested", "--kernel", SID)
    try:
        assert up.returncode == 0, up.stderr.decode()
        yield up.stdout.decode()
    finally:
        kvmlab("down", "--name", "nv")
        assert qemu_pids_in(private_runtime / "labs/nv") == []


def test_nested_on_sid_comes_up_with_nv2(nested_lab):
    # lpa2=off on the nested lab's -cpu max: KVM's IPA limit (each shadow MMU's size) is 48 bits
    assert "KVM      nested (NV2) mode, IPA limit 48 bits, /dev/kvm present" in nested_lab
    status = json.loads(kvmlab("status", "--name", "nv", "--json").stdout)
    assert status["kvm_mode"] == "nested (NV2)" and status["ipa_bits"] == 48
    cmdline = kvmlab("exec", "--name", "nv", "--", "cat", "/proc/cmdline").stdout.decode()
    assert "kvm-arm.mode=nested" in cmdline


#: What CI can afford of the nested suite (the whole of it is `kvmlab test nested`): L2's
#: 2M leaf over THP, 2M and 4K leaves in one memslot (the test below has a 4K leaf alone),
#: and L2 remapping 2M leaves as 4K mid-run with its TLBIs.
NESTED_SAMPLE = ["shadow-2m-over-thp", "shadow-mixed-leaves", "shadow-l2-remap-2m-to-4k"]


def test_the_shadow_stage2_follows_l2s_leaf(nested_lab, tmp_path):
    files = [str(ROOT / "configs/suites/nested" / f"{name}.yaml") for name in NESTED_SAMPLE]
    run = kvmlab("test", "--name", "nv", *files, "--results", str(tmp_path), "--json", str(tmp_path / "r.json"))
    summary = json.loads((tmp_path / "r.json").read_text())
    got = {s["name"]: s for s in summary["scenarios"]}
    assert {n: got[n]["status"] for n in NESTED_SAMPLE} == dict.fromkeys(NESTED_SAMPLE, "pass"), run.stdout.decode()
    assert got["shadow-2m-over-thp"]["counts"] == {"block": 32}  # 64 MiB, one shadow block a region
    assert got["shadow-mixed-leaves"]["counts"] == {"page": 4, "block": 4}
    verdict = json.loads((Path(got["shadow-2m-over-thp"]["artefacts"]) / "verdict.json").read_text())
    check = next(c for c in verdict["checks"] if c["check"] == "l2_hypervisor")
    # L3 ran under L2 and powered off through it (one PSCI call), and L2 was handed no abort
    assert check["ok"] and check["counts"]["l3"] == 32 and check["counts"]["handed_back"] == 0
    assert check["counts"]["l3_calls"] == 1
    # the remap: L2's two TLBI IPAS2E1IS unmapped exactly the two remapped shadow blocks
    remap = json.loads((Path(got["shadow-l2-remap-2m-to-4k"]["artefacts"]) / "verdict.json").read_text())
    check = next(c for c in remap["checks"] if c["check"] == "l2_hypervisor")
    assert check["counts"]["l2_tlbis"] == 2 and check["counts"]["handed_back"] == 0
    maps = {m["label"]: m["regions"] for m in remap["maps"]}  # per level: L2's leaves, the shadow per phase
    assert [r["mapping"] for r in maps["L2's stage-2 after its remap at pause 1"]] == ["page"] * 2 + ["block"] * 6
    again = [r["faults"] for r in maps["shadow stage-2, phase 1"]]
    assert all(512 <= n <= 514 for n in again[:2]) and again[2:] == [0] * 6, again  # the rest stays mapped


def test_an_expectation_that_ignores_l2s_leaf_fails(nested_lab, tmp_path):
    """A block expected where L2 maps 4 KiB pages is a FAIL, with the measured mapping."""
    wrong = tmp_path / "blocks-over-4k-leaves.yaml"
    wrong.write_text(yaml.safe_dump({
        "description": "expects blocks although L2 maps 4 KiB (a wrong expectation)", "l1": {"thp": "always"},
        "l2_hypervisor": {"leaf": "4K"}, "memslots": [{"ipa": "1G", "size": "4M", "backing": "anonymous"}],
        "expect": {"regions": [{"mapping": "block", "faults": [1, 2]}]}}))
    run = kvmlab("test", "--name", "nv", str(wrong), "--results", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"))
    assert run.returncode == 1, run.stdout.decode()
    (only,) = json.loads((tmp_path / "r.json").read_text())["scenarios"]
    assert only["status"] == "fail" and only["counts"] == {"page": 2}, only


def test_a_write_through_l2s_read_only_leaf_is_handed_back_to_l2_and_fails(nested_lab, tmp_path):
    """L1's KVM forwards a permission fault that L2's own stage-2 causes to L2 (7.2's
    kvm_s2_handle_perm_fault); gh.S counts it, and the verdict fails with its ESR and IPA."""
    wrong = tmp_path / "write-read-only.yaml"
    data = yaml.safe_load((ROOT / "configs/suites/nested/shadow-2m-read-only-leaf.yaml").read_text())
    wrong.write_text(yaml.safe_dump({**data, "guest": {"access": "write"}}))
    run = kvmlab("test", "--name", "nv", str(wrong), "--results", str(tmp_path / "r"), "--json", str(tmp_path / "r.json"))
    assert run.returncode == 1, run.stdout.decode()
    (only,) = json.loads((tmp_path / "r.json").read_text())["scenarios"]
    check = next(c for c in only["checks"] if c["check"] == "l2_hypervisor")
    assert only["status"] == "fail" and not check["ok"] and check["counts"]["handed_back"] == 1, check
    assert "(write: permission L2)" in check["text"] and "L3 IPA 0x40000000" in check["text"], check["text"]
