"""L1's l1/job.sh (images/l1/python/l1/job.sh), which L1's agent shell sources to hand a
scenario to the resident runner, run here by L1's own busybox sh under qemu-user (the
host's sh has no `read -t`) against a runner played by the test: the markers and the
status it answers, an earlier job's late line skipped, the host's cancel, the runner
dying, and the runner not there yet."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from lab.core.paths import cache_dir
from lab.machine.agent import _start_time as start_time

JOB_SH = Path(__file__).resolve().parents[2] / "images/l1/python/l1/job.sh"
KEY = "0123abcd"


def busybox() -> list[str]:
    qemu = shutil.which("qemu-aarch64")
    found = sorted(cache_dir().glob("images/rootfs-*/root/usr/bin/busybox"))
    if not qemu or not found:
        pytest.skip("needs qemu-aarch64 (qemu-user) and a built L1 image's busybox (kvmlab images build)")
    return [qemu, str(found[-1])]


class FakeRunner:
    """The runner's side of the protocol: its pid file, the requests FIFO it reads and
    the agent's FIFO it answers on (`answer` decides what, per request line)."""

    def __init__(self, root: Path, pid: int, answer):
        self.dir = root / "runner"
        self.dir.mkdir()
        os.mkfifo(self.dir / "requests")
        os.mkfifo(self.dir / "agent.done")
        (self.dir / "pid").write_text(f"{pid} {KEY} {start_time(pid)}\n")
        self.lines: list[str] = []
        self.answer = answer
        self.fd = os.open(self.dir / "requests", os.O_RDWR)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        pending = b""
        while True:
            data = os.read(self.fd, 4096)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line == STOP:
                    return
                self.lines.append(line.decode())
                reply = self.answer(self, line.decode())
                if reply:
                    fd = os.open(self.dir / "agent.done", os.O_WRONLY | os.O_NONBLOCK)
                    os.write(fd, reply.encode())
                    os.close(fd)


    def stop(self) -> None:
        """Ends serve() (the FIFO never reads EOF: this side holds it open) and closes it."""
        os.write(self.fd, STOP + b"\n")
        self.thread.join(10)
        os.close(self.fd)


#: The line that ends a FakeRunner's thread (no real request looks like it).
STOP = b"fake-runner-stop"


@pytest.fixture
def fake_runner():
    """FakeRunner(root, pid, answer), each stopped when the test ends."""
    made: list[FakeRunner] = []

    def make(root: Path, pid: int, answer) -> FakeRunner:
        made.append(FakeRunner(root, pid, answer))
        return made[-1]

    yield make
    for runner in made:
        runner.stop()


def source_job(root: Path, token: str, timeout: int = 0, script: str = "U0NSSVBU",
               grace: int | None = None) -> subprocess.CompletedProcess:
    share = root / "share"
    share.mkdir(exist_ok=True)
    run = root / "run"
    run.write_text('#!/bin/sh\necho "fallback $*"\n')
    run.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "KVMLAB_L1_RUNNER": str(root / "runner"), "KVMLAB_L1_SHARE": str(share),
           "KVMLAB_L1_RUN": str(run), **({"KVMLAB_L1_CANCEL_GRACE": str(grace)} if grace is not None else {})}
    tools = root / f"tools-{KEY}"  # as in L1's RAM: TOOLS/l1/ (job.sh sources l1/died.sh from there)
    if not tools.exists():
        tools.mkdir()
        (tools / "l1").symlink_to(JOB_SH.parent)
    line = f". {tools}/l1/job.sh {tools} {token} {timeout} /mnt/share/.kvmlab/runs/x/job.json {script}; echo after=$?"
    return subprocess.run([*busybox(), "sh", "-c", line], capture_output=True, env=env, timeout=60)


def test_a_job_is_framed_and_answered_and_an_earlier_jobs_line_is_skipped(tmp_path, fake_runner):
    def answer(runner, line):
        token = line.split()[1]
        (runner.dir / f"{token}.out").write_text("what the scenario said\n")
        return f"earlier 7\n{token} 3\n"

    runner = fake_runner(tmp_path, os.getpid(), answer)
    done = source_job(tmp_path, "tok1")
    assert done.stdout.decode() == "\x1eB tok1\nwhat the scenario said\n\x1eE tok1 3\nafter=0\n", done.stderr
    assert runner.lines == ["run tok1 /mnt/share/.kvmlab/runs/x/job.json agent.done"]
    assert (tmp_path / "share/status-tok1").read_text() == "3\n"


def test_the_hosts_cancel_asks_the_runner_and_the_status_is_124(tmp_path, fake_runner):
    def answer(runner, line):
        return f"{line.split()[1]} 143\n" if line.startswith("cancel ") else ""

    runner = fake_runner(tmp_path, os.getpid(), answer)
    (tmp_path / "share").mkdir()
    (tmp_path / "share/cancel-tok2").touch()
    done = source_job(tmp_path, "tok2")
    assert done.stdout.decode().endswith("\x1eE tok2 124\nafter=0\n"), done.stdout
    assert runner.lines == ["run tok2 /mnt/share/.kvmlab/runs/x/job.json agent.done", "cancel tok2"]


def test_a_runner_that_dies_during_the_job_is_status_125_with_the_reason(tmp_path, fake_runner):
    doomed = subprocess.Popen(["sleep", "60"])

    def answer(runner, line):
        doomed.kill()
        doomed.wait()
        return ""

    fake_runner(tmp_path, doomed.pid, answer)
    done = source_job(tmp_path, "tok3")
    out = done.stdout.decode()
    assert out.endswith("\x1eE tok3 125\nafter=0\n"), out
    assert f"L1's scenario runner (pid {doomed.pid}) died during this scenario" in out


def test_a_runner_that_never_answers_a_cancel_is_killed_and_the_job_ends(tmp_path, fake_runner):
    stuck = subprocess.Popen(["sleep", "600"])  # the runner: alive, and answering nothing
    try:
        runner = fake_runner(tmp_path, stuck.pid, lambda runner, line: "")
        (tmp_path / "share").mkdir()
        (tmp_path / "share/cancel-tok7").touch()
        done = source_job(tmp_path, "tok7", grace=2)
        out = done.stdout.decode()
        assert out.endswith("\x1eE tok7 124\nafter=0\n"), out
        assert f"L1's scenario runner (pid {stuck.pid}) did not answer the cancel in 2 s; it was killed" in out
        assert stuck.wait(timeout=10) == -9
        assert runner.lines == ["run tok7 /mnt/share/.kvmlab/runs/x/job.json agent.done", "cancel tok7"]
    finally:
        stuck.kill()
        stuck.wait()


def test_without_a_ready_runner_the_job_goes_through_kvmlab_run(tmp_path, fake_runner):
    gone = subprocess.Popen(["true"])
    gone.wait()
    fake_runner(tmp_path, os.getpid(), lambda runner, line: "")
    (tmp_path / "runner/pid").write_text(f"{gone.pid} {KEY} 1\n")  # dead: /kvmlab/run starts a runner
    done = source_job(tmp_path, "tok4", 30, "QkFTRTY0")
    assert done.stdout.decode() == "fallback tok4 30 QkFTRTY0\nafter=0\n"
    (tmp_path / "runner/pid").write_text(f"{os.getpid()} otherkey {start_time(os.getpid())}\n")  # another version
    assert source_job(tmp_path, "tok5").stdout.decode().startswith("fallback tok5 ")


def test_a_status_missed_on_the_fifo_is_read_from_the_rc_file(tmp_path, fake_runner):
    def answer(runner, line):
        (runner.dir / f"{line.split()[1]}.rc").write_text("5\n")  # and nothing on the FIFO
        return ""

    fake_runner(tmp_path, os.getpid(), answer)
    assert source_job(tmp_path, "tok6").stdout.decode() == "\x1eB tok6\n\x1eE tok6 5\nafter=0\n"
