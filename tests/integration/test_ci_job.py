"""scripts/ci-job run, as the workflow's step runs it on GitHub (here on one scenario;
.ci/run runs it on the whole suite): reports in place, the summary table appended, the
lab gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import xmlschema

from tests.conftest import qemu_pids_in
from tests.unit.test_results import SCHEMA

pytestmark = pytest.mark.boot
ROOT = Path(__file__).parent.parent.parent


def ci_job(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    summary = tmp_path / "step-summary.md"
    summary.write_text("# earlier step\n")
    return subprocess.run([str(ROOT / "scripts/ci-job"), "run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary), **env})


def test_ci_job_run_writes_every_report(tmp_path, private_runtime):
    before = set(qemu_pids_in(private_runtime))  # the session's kvm_lab may be up
    run = ci_job(tmp_path, KVMLAB_ARGS="-k anon-thp-always", KVMLAB_KERNEL="trixie")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = tmp_path / "kvmlab-out"  # relative to the caller's directory
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(out / "junit.xml"))
    assert json.loads((out / "run.json").read_text())["scenarios"][0]["observed"] == "32 block (1 fault each)"
    assert (out / "html/index.html").exists() and list(out.glob("results/*/summary.json"))
    summary = (tmp_path / "step-summary.md").read_text()
    assert summary.startswith("# earlier step\n")  # appended, not overwritten
    assert "| anon-thp-always | block (1-2/region) | 32 block (1 fault each) | 32 | ✅ pass |" in summary
    assert set(qemu_pids_in(private_runtime)) <= before


def test_ci_job_run_fails_when_a_scenario_fails(tmp_path, private_runtime):
    before = set(qemu_pids_in(private_runtime))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("l1: {thp: always}\nmemslots: [{ipa: 1G, size: 4M, backing: anonymous}]\n"
                     "guest: {access: write}\nexpect: {regions: [{mapping: page}]}\n")
    run = ci_job(tmp_path, KVMLAB_SUITE=str(wrong))
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "❌ fail" in (tmp_path / "step-summary.md").read_text()
    assert set(qemu_pids_in(private_runtime)) <= before
