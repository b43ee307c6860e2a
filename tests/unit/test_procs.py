"""lab/core/procs.py: Ctrl-C in a script reaches its kvmlab child, which is waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from lab.core import procs

CHILD = """
import signal, sys, time
def stop(*_):
    time.sleep(0.3)  # taking its labs down
    open(sys.argv[1], "w").write("cleaned up")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(30)
"""


def test_ctrl_c_is_passed_on_and_the_child_waited_for(tmp_path):
    mark = tmp_path / "mark"
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        procs.run([sys.executable, "-c", CHILD, str(mark)], capture_output=True, text=True)
    assert mark.read_text() == "cleaned up"  # not SIGKILLed, as subprocess.run would have


def test_it_runs_like_subprocess_run(tmp_path):
    done = procs.run([sys.executable, "-c", "print('out'); raise SystemExit(3)"], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (3, "out\n")
    with pytest.raises(subprocess.CalledProcessError):
        procs.run([sys.executable, "-c", "raise SystemExit(1)"], check=True)
