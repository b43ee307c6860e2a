"""The resident scenario runner: one per L1, started by l1/submit.sh on first use (and
before a snapshot is saved, so a restored lab has it ready). It imports everything a
scenario needs once, then forks a process per scenario: each scenario is still a process
of its own (and its VMM a child of that), so a VMM that crashes, hangs or is killed
stays isolated, and the runner's state never leaks into the next scenario.

Measured under TCG: `python3` itself starts in 0.3-0.5 s in L1 and the imports of
l1.scenario, probe, tracefs, kvm and mm take 1.1-1.2 s: paid once here instead of per
scenario.

    python3 -m l1.runner DIR KEY

DIR (in L1's RAM, /run/kvmlab/runner) holds:
    requests      a FIFO of lines: `run TOKEN JOB.json [agent.done]` or `cancel TOKEN`
    agent.done    a FIFO L1's agent shell reads, for the jobs that name it (l1/job.sh):
                  the runner writes "TOKEN STATUS" there, and TOKEN.rc; those jobs'
                  files go when the next job starts
    pid           "PID KEY START" once the runner is ready (KEY: the tools version it
                  runs; START: field 22 of its /proc/PID/stat, so a reused pid is told apart)
    TOKEN.out     the scenario's stdout and stderr
    TOKEN.pgid    its process group, once it runs
    TOKEN.done    a FIFO the client waits on: the runner writes the exit status there
    TOKEN.rc      ... and here (the client reads it if it missed the FIFO)

`cancel` sends the scenario's whole group SIGTERM (the scenario kills its VMM and puts
L1's settings back), then SIGKILL 10 s later if anything of it is left. Should the
runner itself die, each scenario it started gets SIGTERM (PR_SET_PDEATHSIG) and unwinds
the same way; the client sees the runner gone and reports the scenario as an error.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys
import time
import traceback

from lab.shared import codec, contract

# Imported now, once: the forked scenarios find them loaded.
from . import kvm, mm, probe, qemu_vmm, scenario, tracefs  # noqa: F401

#: Seconds between a cancel's SIGTERM and the SIGKILL to what is left of the group.
GRACE = 10.0
#: The FIFO of L1's agent shell (l1/job.sh): one client at a time, lines "TOKEN STATUS".
AGENT_REPLY = "agent.done"
PR_SET_PDEATHSIG = 1
#: loaded once, here: the forked scenarios find it
LIBC = ctypes.CDLL(None, use_errno=True)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _child(directory: str, token: str, job: str, parent: int, number: int, reply: str | None) -> None:
    """In the forked scenario process: its own group, SIGTERM should the runner die,
    output to TOKEN.out, then l1.scenario on the job. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the prctl took
            os._exit(1)
        out = os.open(os.path.join(directory, f"{token}.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        scenario.RUNNER = {"pid": parent, "job": number}  # into result.json: which runner ran it
        scenario.RESULT_OUT = lambda rc: _tell(directory, token, rc, reply)
        code = scenario.main([job])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Runner:
    def __init__(self, directory: str):
        self.dir = directory
        #: pid of each scenario process -> its token
        self.running: dict[int, str] = {}
        #: token -> when to SIGKILL its group, for the cancelled ones
        self.cancelled: dict[str, float] = {}
        #: jobs started so far
        self.jobs = 0
        #: (token, job, reply) asked for while a scenario's process still ran (its tracefs
        #: clean-up after its result): started once it has ended, one scenario at a time
        self.queued: list[tuple[str, str, str | None]] = []
        #: token -> the shared FIFO its client reads (AGENT_REPLY), for such jobs
        self.reply: dict[str, str] = {}
        #: such jobs that have ended: their files go when the next job starts
        self.finished: list[str] = []

    def start(self, token: str, job: str, reply: str | None = None) -> None:
        if not token.replace("-", "").isalnum() or token in self.running.values():
            self.log(f"refused a request with token {token!r}")
            return
        if self.running:
            self.queued.append((token, job, reply))
            return
        for done in self.finished:  # their clients have read them: a new request came
            for suffix in (".out", ".rc", ".pgid"):
                _unlink(os.path.join(self.dir, done + suffix))
        self.finished.clear()
        if reply:
            self.reply[token] = reply
        me = os.getpid()
        self.jobs += 1
        pid = os.fork()
        if pid == 0:
            _child(self.dir, token, job, me, self.jobs, reply)
        try:
            os.setpgid(pid, pid)  # also in the child: whichever runs first
        except OSError:
            pass
        self.running[pid] = token
        _write(os.path.join(self.dir, f"{token}.pgid"), f"{pid}\n")

    def cancel(self, token: str) -> None:
        for queued in [q for q in self.queued if q[0] == token]:
            self.queued.remove(queued)
            _write(os.path.join(self.dir, f"{token}.rc"), "143\n")
            _tell(self.dir, token, 143, queued[2])
            if queued[2]:
                self.finished.append(token)
        for pid, t in self.running.items():
            if t == token and token not in self.cancelled:
                self.cancelled[token] = time.monotonic() + GRACE
                _signal_group(pid, signal.SIGTERM)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            token = self.running.pop(pid, None)
            if token is None:
                continue
            # Anything left of its group (a VMM it did not reap) goes with it.
            _signal_group(pid, signal.SIGKILL)
            self.cancelled.pop(token, None)
            code = os.waitstatus_to_exitcode(status)
            rc = code if code >= 0 else 128 - code
            reply = self.reply.pop(token, None)
            if reply:
                # (its client may have had the status early and gone: a line it never reads)
                _write(os.path.join(self.dir, f"{token}.rc"), f"{rc}\n")
                _tell(self.dir, token, rc, reply)
                self.finished.append(token)
            elif os.path.exists(os.path.join(self.dir, f"{token}.done")):
                # (gone when the client, told early, has finished: then nothing to write)
                _write(os.path.join(self.dir, f"{token}.rc"), f"{rc}\n")
                _tell(self.dir, token, rc)
            elif rc:
                self.log(f"job {token} ended with status {rc} after its client had its result")
        while self.queued and not self.running:
            self.start(*self.queued.pop(0))

    def escalate(self) -> None:
        now = time.monotonic()
        for pid, token in list(self.running.items()):
            deadline = self.cancelled.get(token)
            if deadline is not None and now >= deadline:
                _signal_group(pid, signal.SIGKILL)

    def request(self, line: str) -> None:
        words = line.split()
        if len(words) == 3 and words[0] == "run":
            self.start(words[1], words[2])
        elif len(words) == 4 and words[0] == "run" and words[3] == AGENT_REPLY:
            self.start(words[1], words[2], AGENT_REPLY)
        elif len(words) == 2 and words[0] == "cancel":
            self.cancel(words[1])
        elif words:
            self.log(f"unknown request {line!r}")

    def log(self, text: str) -> None:
        sys.stderr.write(f"kvmlab-l1-runner: {text}\n")
        sys.stderr.flush()


def _tell(directory: str, token: str, rc: int, reply: str | None = None) -> None:
    """The status into the client's FIFO, if the client still waits on it: TOKEN.done,
    or the agent's shared one (`reply`, where the line carries the token). The runner
    tells it when the scenario's process ends; the scenario's process itself, earlier,
    once its result.json is written (scenario.RESULT_OUT)."""
    path, line = (reply, f"{token} {rc}\n") if reply else (f"{token}.done", f"{rc}\n")
    try:
        fd = os.open(os.path.join(directory, path), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no client (gone, or it reads TOKEN.rc)
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def serve(directory: str, key: str) -> int:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    requests = os.path.join(directory, "requests")
    _unlink(requests)  # a dead runner's unread requests are not this one's
    os.mkfifo(requests, 0o600)
    _unlink(os.path.join(directory, AGENT_REPLY))
    os.mkfifo(os.path.join(directory, AGENT_REPLY), 0o600)
    # Read and write: the FIFO never reports end-of-file between clients, and a client's
    # write never blocks while this runner lives.
    fifo = os.open(requests, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    runner = Runner(directory)
    tracefs.mm_threads()  # found once, here: the forked scenarios inherit the list
    for job in (contract.ScenarioJob, contract.ProbeJob):  # and the jobs' type hints, resolved
        codec.prime(job)
    with open("/proc/self/stat") as f:
        started = f.read().rsplit(")", 1)[1].split()[19]  # field 22: after pid and (comm)
    _write(os.path.join(directory, "pid"), f"{os.getpid()} {key} {started}\n")
    pending = b""
    while True:
        timeout = 1.0 if runner.cancelled else None
        try:
            ready, _, _ = select.select([fifo, wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        if fifo in ready:
            try:
                pending += os.read(fifo, 65536)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    runner.request(line.decode(errors="replace"))
                except Exception:  # one bad request does not end the runner
                    runner.log(traceback.format_exc())
        runner.reap()
        runner.escalate()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2]))
