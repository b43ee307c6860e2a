"""Concurrency: labs side by side give the verdicts one lab gives alone; two `up` of one
name race and exactly one wins."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot

#: Fast scenarios whose mappings are deterministic: blocks, pages, splits, madvise.
MORE = ("madvise-hugepage", "madvise-no-hint", "dirty-log-after-blocks")


def verdicts(results: Path) -> dict[str, tuple[str, dict]]:
    [summary] = results.glob("*/summary.json")
    data = json.loads(summary.read_text())
    return {s["name"]: (s["status"], s["counts"]) for s in data["scenarios"]}


def targets() -> list[str]:
    from lab.core.paths import SUITES_DIR

    return [str(SUITES_DIR / "thp" / f"{name}.yaml") for name in ("anon-thp-always", "anon-thp-never", *MORE)]


def test_two_labs_in_parallel_give_the_verdicts_of_one_at_a_time(tmp_path, private_runtime):
    names = ("conc-a", "conc-b")
    for name in names:
        assert kvmlab("up", "--name", name).returncode == 0
    try:
        # One at a time, on the first lab.
        alone = kvmlab("test", "--name", names[0], *targets(), "--results", str(tmp_path / "alone"))
        assert alone.returncode == 0, alone.stdout.decode()
        # Both labs at once, each the whole set.
        procs = [subprocess.Popen([sys.executable, "-m", "lab.cli", "test", "--name", name, *targets(),
                                   "--results", str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name in names]
        outputs = [p.communicate(timeout=900)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        expected = verdicts(tmp_path / "alone")
        assert len(expected) == 5 and all(status == "pass" for status, _ in expected.values())
        for name in names:
            assert verdicts(tmp_path / name) == expected
    finally:
        for name in names:
            kvmlab("down", "--name", name)
    assert qemu_pids_in(private_runtime / "labs") == []


@pytest.mark.parametrize("round_", [1, 2])
def test_two_ups_of_one_name_race_and_exactly_one_wins(round_, private_runtime):
    name = "race"
    lab_dir = private_runtime / "labs" / name
    procs = [subprocess.Popen([sys.executable, "-m", "lab.cli", "up", "--name", name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    done = [(p.wait(timeout=300), *(s.decode() for s in p.communicate())) for p in procs]
    try:
        codes = sorted(code for code, _, _ in done)
        assert codes == [0, 1], done
        [(_, _, loser)] = [d for d in done if d[0] == 1]
        # The loser says why: the other is starting it, or has already started it.
        assert ("is being started or stopped by another kvmlab" in loser
                or f"lab {name!r} is already up" in loser), loser
        [winner_pid] = qemu_pids_in(lab_dir)
        assert json.loads((lab_dir / "lab.json").read_text())["pid"] == winner_pid
    finally:
        kvmlab("down", "--name", name)
    assert qemu_pids_in(lab_dir) == []


def test_commands_on_one_lab_at_once_each_get_their_own_output(private_runtime):
    """Execs share L1's one command channel (they queue on the lab's agent lock); QMP
    has a lock of its own, so it answers while an exec runs."""
    name = "conc-one"
    assert kvmlab("up", "--name", name).returncode == 0
    try:
        slow = [subprocess.Popen([sys.executable, "-m", "lab.cli", "exec", "--name", name, "--", "sh", "-c",
                                  f"sleep 2; echo slow-{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for i in range(2)]
        status = kvmlab("qmp", "--name", name, "query-status")
        assert status.returncode == 0 and json.loads(status.stdout)["return"]["status"] == "running"
        quick = kvmlab("exec", "--name", name, "--", "echo", "quick")
        assert (quick.returncode, quick.stdout) == (0, b"quick\n")
        for i, proc in enumerate(slow):
            out, err = proc.communicate(timeout=120)
            assert (proc.returncode, out) == (0, f"slow-{i}\n".encode()), err
    finally:
        kvmlab("down", "--name", name)


def test_test_j2_spreads_the_scenarios_over_two_labs_with_the_same_verdicts(tmp_path, private_runtime):
    assert kvmlab("up", "--name", "conc-j").returncode == 0
    try:
        alone = kvmlab("test", "--name", "conc-j", *targets(), "--results", str(tmp_path / "alone"))
        assert alone.returncode == 0, alone.stdout.decode()
        spread = kvmlab("test", "--name", "conc-j", "-j", "2", *targets(), "--results", str(tmp_path / "j2"))
        assert spread.returncode == 0, spread.stdout.decode() + spread.stderr.decode()
        assert verdicts(tmp_path / "j2") == verdicts(tmp_path / "alone")
        [summary] = (tmp_path / "j2").glob("*/summary.json")
        data = json.loads(summary.read_text())
        # In the order given, each marked with the lab it ran on; both labs took some.
        assert [s["name"] for s in data["scenarios"]] == [Path(t).stem for t in targets()]
        assert data["labs"] == ["conc-j", "conc-j-j1"]
        assert {s["lab"] for s in data["scenarios"]} == {"conc-j", "conc-j-j1"}
        assert (summary.parent / "l1-console-conc-j-j1.log").stat().st_size > 0
        # The helper lab was brought down again; the user's lab stays up.
        assert qemu_pids_in(private_runtime / "labs" / "conc-j-j1") == []
        assert kvmlab("status", "--name", "conc-j").returncode == 0
    finally:
        kvmlab("down", "--name", "conc-j")


def test_ctrl_c_during_test_j2_leaves_no_helper_lab(tmp_path, private_runtime):
    # Interrupted while the extra lab is still booting: it is taken down once up, not leaked.
    assert kvmlab("up", "--name", "conc-int").returncode == 0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "test", "--name", "conc-int", "-j", "2",
                                 *targets(), "--results", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 130, out.decode()[-2000:]
        assert qemu_pids_in(private_runtime / "labs" / "conc-int-j1") == []
        assert kvmlab("status", "--name", "conc-int").returncode == 0  # the user's lab stays up
    finally:
        kvmlab("down", "--name", "conc-int")
