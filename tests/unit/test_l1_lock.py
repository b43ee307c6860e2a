"""L1's start lock (images/l1/python/l1/lock.sh), run by the host's own sh: kvmlab up's
early start of the runner and a scenario's submit.sh may both want to start the runner
or copy the tools; one at a time, and a holder that died does not block the next."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

LOCK_SH = Path(__file__).resolve().parents[2] / "images/l1/python/l1/lock.sh"


def shell(script: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", f". {LOCK_SH}\n{script}"], stdout=subprocess.PIPE, text=True, **kw)


def test_two_takers_hold_it_one_after_the_other(tmp_path):
    lock, log = tmp_path / "start.lock", tmp_path / "log"
    body = (f"lock_take {lock} || exit 9; echo \"in $$\" >> {log}; sleep 0.3; "
            f"echo \"out $$\" >> {log}; lock_drop {lock}")
    procs = [shell(body) for _ in range(3)]
    assert [p.wait(timeout=30) for p in procs] == [0, 0, 0]
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 6
    for i in range(0, 6, 2):  # each "in" followed by the same taker's "out"
        assert lines[i].split()[0] == "in" and lines[i + 1] == "out " + lines[i].split()[1]
    assert not lock.exists()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    lock = tmp_path / "start.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.mkdir()
    (lock / "owner").write_text(f"{dead.pid} 12345\n")  # gone (or its pid reused: another start)
    taker = shell(f"lock_take {lock} && cat {lock}/owner")
    out, _ = taker.communicate(timeout=10)
    assert taker.returncode == 0
    pid, started = out.split()
    assert int(pid) == taker.pid
    assert started.isdigit() and started != "12345"  # its own start time, field 22 of its stat


def test_a_live_holder_is_waited_for(tmp_path):
    lock, got = tmp_path / "start.lock", tmp_path / "got"
    holder = shell(f"lock_take {lock} && echo held && sleep 30", start_new_session=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    waiter = shell(f"lock_take {lock} && : > {got}")
    time.sleep(1.0)
    assert waiter.poll() is None and not got.exists()  # still waiting: its holder lives
    os.killpg(holder.pid, signal.SIGKILL)  # it dies holding the lock
    holder.wait()
    assert waiter.wait(timeout=10) == 0 and got.exists()
