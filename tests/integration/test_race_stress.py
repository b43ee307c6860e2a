"""The exit_mmap() race from the review of "KVM: arm64: Walk userspace page tables to
compute the THP mapping size", stressed on the oldest and the newest Debian kernel (5.10,
before the series, and sid's 7.x): configs/suites/stress/exit-mmap-race (50 VMM kills while 4
vCPUs fault on THP memory under munmap / MADV_DONTNEED churn). Here it runs RUNS times per
kernel, to keep CI short; the scenario's own 50, on all four kernels again and again, are
`scripts/soak stress`: a full matrix is a soak, not a CI test.

What is checked is kvmlab: on each kernel all RUNS runs happen, every one faults, and the
verdict is a pass or a kernel finding with its evidence (a crash in L1's log, a VMM the
kernel killed), never an error of the lab. Which kernels pass is the kernels' business:
sid's 7.2.13 once gave a WARNING in kvm_vcpu_load_debug (docs/hardening.md)."""

from __future__ import annotations

import json

import pytest
import yaml

from lab.core.paths import SUITES_DIR
from tests.conftest import kvmlab

#: before and after "Walk userspace page tables to compute the THP mapping size" (5.15)
KERNELS = ["bullseye", "sid"]
RUNS = 20

pytestmark = pytest.mark.boot


def test_exit_mmap_race_runs_on_the_oldest_and_newest_kernel_and_judges_each(tmp_path):
    scenario = yaml.safe_load((SUITES_DIR / "stress" / "exit-mmap-race.yaml").read_text())
    scenario["repeat"] = RUNS
    (tmp_path / "exit-mmap-race.yaml").write_text(yaml.safe_dump(scenario))
    out = tmp_path / "matrix.json"
    result = kvmlab("matrix", "--kernels", ",".join(KERNELS), str(tmp_path / "exit-mmap-race.yaml"),
                    "--results", str(tmp_path / "results"),
                    "--json", str(out), timeout=1800)
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode in (0, 1), text
    doc = json.loads(out.read_text())
    assert sorted(doc["runs"]) == sorted(KERNELS)
    lines = []
    for label, run in doc["runs"].items():
        [scenario] = run["scenarios"]
        checks = {c["check"]: c for c in scenario["checks"]}
        assert scenario["status"] in ("pass", "fail"), (label, scenario["reasons"])
        assert checks["faulting"]["ok"], (label, checks["faulting"])  # RUNS runs, each one faulting
        assert scenario["faults"] >= RUNS
        if scenario["status"] == "fail":
            # A finding, with its evidence: L1's crash report (its excerpt), or the runs the kernel ended.
            crashed = not checks["clean_log"]["ok"] and scenario["reasons"][0].startswith("L1 log: ")
            assert crashed or ": the VMM died of signal" in checks["runs"]["text"], (label, scenario["reasons"])
        else:
            assert checks["runs"]["text"].startswith(f"{RUNS}/{RUNS} VMM runs killed mid-run")
        lines.append(f"{label}: {scenario['status']} {scenario['observed']}"
                     + ("" if scenario["status"] == "pass" else f" ({scenario['reasons'][0]})"))
    print("exit-mmap-race: " + "; ".join(lines))
    assert result.returncode == (0 if all(r["scenarios"][0]["status"] == "pass" for r in doc["runs"].values()) else 1)
