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


def test_a_signal_in_a_held_block_acts_once_the_block_has_ended():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with procs.signals_held():
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: Python runs its handler at once
            done.append("the block's last step")
    assert done == ["the block's last step"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_each_held_signal_reaches_the_handler_it_had():
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with procs.signals_held():
            signal.raise_signal(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_qemu_is_started_leaves_its_pid_known_so_it_is_reaped(tmp_path, monkeypatch):
    """A SIGINT after the fork, before Popen returns (`kvmlab up` was sent it as QEMU's
    command line appeared: 5 QEMUs left running in 300), waits until the pid is kept."""
    from lab.machine.qemu import L0Process

    class InterruptedPopen(subprocess.Popen):
        def _execute_child(self, *args, **kwargs):
            super()._execute_child(*args, **kwargs)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(subprocess, "Popen", InterruptedPopen)
    l0 = L0Process(["sleep", "60"], tmp_path / "qemu.log")
    with pytest.raises(KeyboardInterrupt):
        l0.start()
    assert l0.proc is not None and l0.exit_code() is None
    l0.kill()
    assert l0.exit_code() is not None  # stopped and reaped


def test_outside_the_main_thread_the_block_runs_as_it_is():
    errors = []

    def block():
        try:
            with procs.signals_held():
                pass
        except Exception as exc:  # noqa: BLE001  (signal.signal from a thread: ValueError)
            errors.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    thread.join()
    assert errors == []
