"""Concurrency: labs side by side give the verdicts one lab gives alone; two `up` of one
name race and exactly one wins."""

from __future__ import annotations

import fcntl
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


@pytest.fixture(scope="module")
def alone(tmp_path_factory, private_runtime):
    """Lab conc-a up, and the verdicts of the scenarios run on it one at a time: what the
    concurrent runs below must give. The lab stays up for them."""
    results = tmp_path_factory.mktemp("alone")
    assert kvmlab("up", "--name", "conc-a").returncode == 0
    try:
        run = kvmlab("test", "--name", "conc-a", *targets(), "--results", str(results))
        assert run.returncode == 0, run.stdout.decode()
        expected = verdicts(results)
        assert len(expected) == 5 and all(status == "pass" for status, _ in expected.values())
        yield expected
    finally:
        kvmlab("down", "--name", "conc-a")


def test_two_labs_in_parallel_give_the_verdicts_of_one_at_a_time(alone, tmp_path, private_runtime):
    names = ("conc-a", "conc-b")
    assert kvmlab("up", "--name", "conc-b").returncode == 0
    try:
        # Both labs at once, each the whole set.
        procs = [subprocess.Popen([sys.executable, "-m", "lab.cli", "test", "--name", name, *targets(),
                                   "--results", str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name in names]
        outputs = [p.communicate(timeout=900)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        for name in names:
            assert verdicts(tmp_path / name) == alone
    finally:
        kvmlab("down", "--name", "conc-b")
    assert qemu_pids_in(private_runtime / "labs" / "conc-b") == []


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


def test_test_j2_spreads_the_scenarios_over_two_labs_with_the_same_verdicts(alone, tmp_path, private_runtime):
    # The helper lab boots while conc-a already runs scenarios: on a fast host conc-a ran
    # all five before the helper was up (CI, 2026-12-04). So conc-a is held at its agent's
    # lock (where concurrent execs queue) until the helper is up: both labs then take some.
    with open(private_runtime / "labs" / "conc-a" / "agent.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "test", "--name", "conc-a", "-j", "2", *targets(),
                                 "--results", str(tmp_path / "j2")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while kvmlab("status", "--name", "conc-a-j1").returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the helper lab conc-a-j1 never came up"
            time.sleep(0.2)
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out
    assert verdicts(tmp_path / "j2") == alone
    [summary] = (tmp_path / "j2").glob("*/summary.json")
    data = json.loads(summary.read_text())
    # In the order given, each marked with the lab it ran on; both labs took some.
    assert [s["name"] for s in data["scenarios"]] == [Path(t).stem for t in targets()]
    assert data["labs"] == ["conc-a", "conc-a-j1"]
    assert {s["lab"] for s in data["scenarios"]} == {"conc-a", "conc-a-j1"}
    assert (summary.parent / "l1-console-conc-a-j1.log").stat().st_size > 0
    # The helper lab was brought down again; the user's lab stays up.
    assert qemu_pids_in(private_runtime / "labs" / "conc-a-j1") == []
    assert kvmlab("status", "--name", "conc-a").returncode == 0


def test_ctrl_c_during_test_j2_leaves_no_helper_lab(alone, tmp_path, private_runtime):
    # Interrupted while the extra lab is still booting: it is taken down once up, not leaked.
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "test", "--name", "conc-a", "-j", "2",
                             *targets(), "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out.decode()[-2000:]
    assert qemu_pids_in(private_runtime / "labs" / "conc-a-j1") == []
    assert kvmlab("status", "--name", "conc-a").returncode == 0  # the user's lab stays up
