"""Starting and running child processes so that Ctrl-C neither loses nor orphans them.

`run`: running kvmlab from a script (scripts/soak, scripts/bench) so that Ctrl-C reaches it.

subprocess.run answers a KeyboardInterrupt by SIGKILLing its child: a `kvmlab matrix`
killed so cannot stop its labs, and their QEMUs are left running (found by interrupting
scripts/soak). Here the child is sent SIGINT, as a terminal's Ctrl-C would, and waited for
while it takes its labs down; it is killed only if it has not ended after `grace` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

#: The signals kvmlab answers by tidying up (Ctrl-C; SIGTERM and SIGHUP unwind like it).
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class signals_held:  # noqa: N801  (used as a function: `with signals_held():`)
    """Ctrl-C, SIGTERM and SIGHUP wait until the block has ended, then act as they would
    have. For a child's start: a KeyboardInterrupt raised inside subprocess.Popen after the
    fork, before Popen has returned, leaves the child running and its pid known to nobody.
    That left a QEMU of its own session running after a Ctrl-C of `kvmlab up`: 5 in 300
    SIGINTs sent as QEMU's command line appeared. Python runs signal handlers in the main
    thread only; elsewhere the block runs as it is. (No contextlib, no threading: `up`
    imports this before it starts QEMU, lab/machine/prestart.py.)"""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.before: dict[int, Any] = {}

    def __enter__(self) -> None:
        try:
            for signum in STOPPING:
                self.before[signum] = signal.signal(signum, self._hold)
        except ValueError:  # not the main thread: nothing to hold (nothing was changed)
            pass

    def _hold(self, signum: int, _frame: Any) -> None:
        self.caught.append(signum)

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self.before.items():
            signal.signal(signum, handler)
        if self.caught:
            handler = self.before.get(self.caught[0], signal.SIG_DFL)
            if callable(handler):
                handler(self.caught[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), self.caught[0])  # its default action, now that it is restored


def run(args: list[str], grace: float = 120.0, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run(args, **kwargs) (capture_output, text, env, cwd, check, ...), with
    Ctrl-C passed on to the child and the child waited for."""
    check = kwargs.pop("check", False)
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with subprocess.Popen(args, **kwargs) as child:
        try:
            out, err = child.communicate()
        except KeyboardInterrupt:
            try:
                child.send_signal(signal.SIGINT)
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            except ProcessLookupError:
                pass
            raise
    done = subprocess.CompletedProcess(args, child.returncode, out, err)
    if check:
        done.check_returncode()
    return done
