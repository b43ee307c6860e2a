"""Running kvmlab from a script (scripts/soak, scripts/bench) so that Ctrl-C reaches it.

subprocess.run answers a KeyboardInterrupt by SIGKILLing its child: a `kvmlab matrix`
killed so cannot stop its labs, and their QEMUs are left running (found by interrupting
scripts/soak). Here the child is sent SIGINT, as a terminal's Ctrl-C would, and waited for
while it takes its labs down; it is killed only if it has not ended after `grace` seconds.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any


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
