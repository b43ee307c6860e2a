"""The L1 side's control channel: a shell on hvc0 (virtio console), reached through the
lab's agent socket and driven with pexpect.

The kernel logs to ttyAMA0, not here, so what a command prints is not interleaved with
kernel messages. L1's /kvmlab/run runs each command in a session of its own with stdin
from /dev/null, framed by a begin and an end marker carrying a random token; the end
marker carries the exit status. Output between the markers is streamed as it arrives.
The tty has no echo and no output processing, so bytes arrive as the command wrote them
(stdout and stderr merged).
"""

from __future__ import annotations

import base64
import fcntl
import io
import math
import os
import re
import secrets
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

if TYPE_CHECKING:
    import pexpect.fdpexpect

from lab.core.errors import LabError
from lab.machine import share
from lab.machine.qemu import LabPaths

#: Guest path of the lab's share (mounted by L1's agent once ready, images/l1/rootfs/etc/fstab).
GUEST_SHARE = "/mnt/share"
#: Canonical-mode tty lines stop at 4095 bytes; longer scripts travel through the share.
MAX_LINE = 3000
RS = b"\x1e"
#: How long a cancelled command may take to end: L1's watchdog notices the cancel file
#: within 1 s and gives SIGTERM 10 s before SIGKILL (images/l1/rootfs/kvmlab/run), plus slack.
UNWIND_SECONDS = 20
#: Seconds between two looks of the watch (QEMU alive, L1's console, the host's free space).
WATCH_EVERY = 0.1


@contextmanager
def flock(path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Agent:
    def __init__(self, paths: LabPaths, watch: Callable[[], str | None] | None = None):
        self.paths = paths
        self._nudged = False
        #: Asked while a command runs quietly: a reason to stop waiting (L1 panicked), or None.
        self.watch = watch

    @contextmanager
    def _connect(self) -> Iterator[pexpect.fdpexpect.fdspawn]:
        # (imported here: `kvmlab up` reaches L1 through the share, and pexpect's import is 5 ms of it)
        import pexpect.fdpexpect

        # The socket takes one client at a time: concurrent execs queue on this lock.
        with flock(self.paths.dir / "agent.lock"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.paths.agent))
            except OSError as exc:
                sock.close()
                raise LabError(f"cannot reach L1's agent at {self.paths.agent}: {exc.strerror}; "
                               "is the lab up? (kvmlab status)") from None
            child = pexpect.fdpexpect.fdspawn(sock.fileno(), timeout=10)
            try:
                yield child
            finally:
                sock.close()

    def run(self, command: list[str] | str, out: BinaryIO, timeout: float | None = None,
            answer_timeout: float = 15.0, via: Callable[[str, int, str], str] | None = None) -> int:
        """Runs `command` (argv, or a shell script if a string) in L1; streams its output to
        `out`; returns its exit status, or 124 if it ran past `timeout` seconds.

        L1's /kvmlab/run does the framing and the timeout, so a stuck command never wedges
        the channel; Ctrl-C here asks it to interrupt the command, then re-raises. `via`
        makes the line typed from (token, timeout in seconds, the script as /kvmlab/run
        takes it) instead, for a line that frames its output the same way
        (lab/machine/l1runner.py job_line).
        """
        import pexpect

        script = command if isinstance(command, str) else shlex.join(command)
        token = secrets.token_hex(8)
        begin = RS + f"B {token}\n".encode()
        end = re.compile(re.escape(RS) + f"E {token} (\\d+)\n".encode())
        kvmlab_dir = self.paths.share / ".kvmlab"
        argument = base64.b64encode(script.encode()).decode()
        spilled = None
        if len(argument) > MAX_LINE:
            spilled = kvmlab_dir / f"exec-{token}.sh"
            spilled.parent.mkdir(parents=True, exist_ok=True)
            spilled.write_text(script + "\n")
            argument = f"@{GUEST_SHARE}/.kvmlab/{spilled.name}"
        seconds = 0 if timeout is None else max(1, math.ceil(timeout))
        cancel = kvmlab_dir / f"cancel-{token}"
        # Which kvmlab owns the command: host bookkeeping, kept out of L1's reach (not in the share).
        owner = self.paths.dir / f"owner-{token}"
        orphans: list[str] = []
        try:
            with self._connect() as child:
                orphans = self._cancel_orphans(self.paths.dir, kvmlab_dir)
                if orphans:
                    answer_timeout += UNWIND_SECONDS
                owner.parent.mkdir(parents=True, exist_ok=True)
                owner.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
                line = via(token, seconds, argument) if via else f"/kvmlab/run {token} {seconds} {argument}"
                child.send(f"{line}\n".encode())
                try:
                    # Anything before our begin marker is left over from an earlier session.
                    child.expect_exact(begin, timeout=answer_timeout)
                except (pexpect.TIMEOUT, pexpect.EOF):
                    raise LabError(f"L1's agent did not answer within {answer_timeout:g} s "
                                   "(L1 hung or crashed?); see `kvmlab console` or the console log "
                                   f"{self.paths.console_log}") from None
                status_file = kvmlab_dir / f"status-{token}"
                # The guest enforces `timeout`; this is only the net under it.
                limit = None if timeout is None else seconds + 30
                try:
                    return self._stream(child, end, out, status_file, limit)
                except KeyboardInterrupt:
                    cancel.parent.mkdir(parents=True, exist_ok=True)
                    cancel.touch()
                    try:
                        self._stream(child, end, out, status_file, limit=UNWIND_SECONDS)
                    except LabError:
                        pass
                    raise
        finally:
            # (and what QEMU's 9p keeps of a file L1 made, in .virtfs_metadata: one per
            # command otherwise, for as long as the lab lives)
            for path in (spilled, cancel, owner, kvmlab_dir / f"status-{token}",
                         kvmlab_dir / share.METADATA / f"status-{token}"):
                if path is not None:
                    path.unlink(missing_ok=True)
            for old in orphans:  # they have ended by now: our command ran after them
                for name in (f"cancel-{old}", f"status-{old}", f"{share.METADATA}/status-{old}"):
                    (kvmlab_dir / name).unlink(missing_ok=True)

    @staticmethod
    def _cancel_orphans(owners: Path, kvmlab_dir: Path) -> list[str]:
        """Commands whose kvmlab was killed still run in L1 and hold the channel: each is
        asked to stop, as Ctrl-C would have (its watchdog sees the cancel file). Returns
        their tokens."""
        gone = []
        for owner in owners.glob("owner-*"):
            token = owner.name[len("owner-"):]
            try:
                pid, started = owner.read_text().split()
            except (OSError, ValueError):
                owner.unlink(missing_ok=True)
                continue
            if _start_time(int(pid)) == started:
                continue  # its kvmlab is alive: the lock above waited for it
            (kvmlab_dir / f"cancel-{token}").touch()
            owner.unlink(missing_ok=True)
            gone.append(token)
            sys.stderr.write(f"kvmlab: note: a command of a kvmlab that was killed (pid {pid}) was still "
                             "running in L1: stopping it\n")
        return gone

    def run_capture(self, command: list[str] | str, timeout: float | None = 60,
                    via: Callable[[str, int, str], str] | None = None) -> tuple[int, str]:
        out = io.BytesIO()
        status = self.run(command, out, timeout=timeout, via=via)
        return status, out.getvalue().decode(errors="replace")

    def _stream(self, child, end: re.Pattern[bytes], out: BinaryIO, status_file: Path,
                limit: float | None = None) -> int:
        import pexpect

        buf = child.buffer if isinstance(child.buffer, bytes) else b""
        child.buffer = b""
        deadline = None if limit is None else time.monotonic() + limit
        finished_at = None
        watched = time.monotonic()
        while True:
            match = end.search(buf)
            if match:
                out.write(buf[: match.start()])
                out.flush()
                return int(match.group(1))
            # Keep back a tail that could be the start of the end marker.
            keep = buf.rfind(RS)
            cut = len(buf) if keep == -1 else keep
            if cut:
                out.write(buf[:cut])
                out.flush()
                buf = buf[cut:]
            if deadline is not None and time.monotonic() > deadline:
                raise LabError("the command in L1 did not stop when asked")
            # Watched every 0.1 s, busy or quiet: a command that prints while it fills the
            # share is seen as well as a quiet one.
            # (The share takes 35-40 MB/s from L1 since cache=mmap: 0.5 s let 20 MB and more
            # land between two looks at the host's free space.)
            if self.watch is not None and time.monotonic() - watched > WATCH_EVERY:
                watched = time.monotonic()
                problem = self.watch()
                if problem:
                    raise LabError(problem)
            try:
                buf += child.read_nonblocking(65536, timeout=WATCH_EVERY)
                continue
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                raise LabError("L1's agent went away in the middle of a command (did QEMU exit?)") from None
            # Idle. If L1 says the command has ended but its end marker has not come, nudge
            # the channel once, then trust the status L1 left in the share.
            if finished_at is None:
                if os.path.lexists(status_file):
                    finished_at = time.monotonic()
            elif time.monotonic() - finished_at > 1.0 and not self._nudged:
                self._nudged = True
                child.send(b"\n")
            elif time.monotonic() - finished_at > 4.0:
                out.write(buf)
                out.flush()
                sys.stderr.write("kvmlab: warning: the agent channel lost the end of the output; "
                                 "the exit status comes from the share\n")
                try:
                    return int(share.read_text(self.paths.share, f".kvmlab/{status_file.name}", 64).strip() or 1)
                except (ValueError, OSError, LabError):
                    return 1


def _start_time(pid: int) -> str:
    """When `pid` started (clock ticks since boot): tells a live process from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "gone"


def attach_console(path: Path, escape: bytes = b"\x1d") -> None:
    """Joins the terminal to L1's serial console socket until `escape` (Ctrl-]) is typed.

    The terminal is in raw mode meanwhile, so keys such as Ctrl-C reach L1."""
    import os
    import select
    import termios
    import tty

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        raise LabError(f"cannot reach L1's console at {path}: {exc.strerror}") from None
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(stdin)
    try:
        tty.setraw(stdin)
        sock.sendall(b"\n")  # a fresh prompt
        while True:
            ready, _, _ = select.select([stdin, sock], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or escape in data:
                    sock.sendall(data.split(escape)[0])
                    break
                sock.sendall(data)
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
