"""The exit_mmap() race from the review of "KVM: arm64: Walk userspace page tables to
compute the THP mapping size", stressed on every Debian kernel: configs/stress/exit-mmap-race
(50 VMM kills while 4 vCPUs fault on THP memory under munmap / MADV_DONTNEED churn)."""

from __future__ import annotations

import json

import pytest

from lab.kernels.spec import SUITES
from tests.conftest import kvmlab

pytestmark = pytest.mark.boot


def test_exit_mmap_race_on_every_debian_kernel(tmp_path):
    out = tmp_path / "matrix.json"
    result = kvmlab("matrix", "--kernels", ",".join(SUITES), "stress", "--results", str(tmp_path / "results"),
                    "--json", str(out), timeout=1800)
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, text
    doc = json.loads(out.read_text())
    rates = {}
    for label, run in doc["runs"].items():
        [scenario] = run["scenarios"]
        assert scenario["status"] == "pass", (label, scenario["reasons"])
        checks = {c["check"]: c for c in scenario["checks"]}
        assert checks["runs"]["ok"] and checks["runs"]["text"].startswith("50/50 VMM runs killed mid-run")
        assert checks["faulting"]["ok"] and checks["clean_log"]["ok"]
        rates[label] = scenario["timings"]["runs_per_second"]
    assert sorted(rates) == sorted(SUITES)
    print("exit-mmap-race runs per second: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
