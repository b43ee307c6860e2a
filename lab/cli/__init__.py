"""The `kvmlab` command: a thin layer over lab.machine.Lab, lab.scenarios, lab.orchestrate
and lab.builder. Each module registers its commands on the group in base.py.

Exit status: 0 done; 1 the lab failed (or the command run in L1 failed, for `exec`: its
own status); 2 bad input (a config key, a value, a path); 130 interrupted.

Kept light: `run` starts `kvmlab up`'s QEMU from the last such `up`'s command before it
imports the rest (lab/machine/prestart.py); `main` is base.py's group.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["main", "run"]


#: The last signal that `terminate` answered (SIGINT's is Python's own handler).
_STOPPED_BY: list[int] = []


def terminate(signum, frame):
    """SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so QEMUs being started
    are stopped and reaped and half-built images removed."""
    _STOPPED_BY[:] = [signum]
    raise KeyboardInterrupt


def stop_again(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt that Python ignored, because the signal's
    handler ran inside a weakref callback or a finalizer, is sent again; else Ctrl-C is lost
    and the command goes on (1 SIGINT in 400 during `up`'s imports: raised in a callback of
    the import system's, and `up` booted L1). Sent 10 ms later from a thread of its own (not
    waited for), so that the main thread handles it once this hook has returned, and not in
    here, where it would be ignored again."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        if sys.is_finalizing():
            return  # kvmlab is ending already (no thread can start now)
        import _thread
        import signal
        import time

        def send(signum: int) -> None:
            time.sleep(0.01)
            os.kill(os.getpid(), signum)

        _thread.start_new_thread(send, (_STOPPED_BY[-1] if _STOPPED_BY else signal.SIGINT,))
        return
    sys.__unraisablehook__(unraisable)


def run() -> None:
    """The `kvmlab` command (the console script, `python -m lab.cli`)."""
    sys.unraisablehook = stop_again
    from lab.machine.prestart import Prestart, launch_key

    key = launch_key(sys.argv[1:])
    prestart = None
    if key is not None:
        import signal

        # From here, SIGTERM and SIGHUP unwind like Ctrl-C: the QEMU started below is reaped.
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, terminate)
        prestart = Prestart(key)
    interrupted = False
    try:
        if prestart is not None:
            try:
                prestart.start()
            except Exception:  # noqa: BLE001  (only the head start is lost: `up` goes on without it)
                pass
        from lab.cli.base import run as run_command

        run_command(prestart)
    except KeyboardInterrupt:  # before the group's own handler (base.py) is in place
        print("kvmlab: interrupted", file=sys.stderr)
        interrupted = True
    except Exception as exc:
        # Ctrl-C while a class was made during an import: Python wraps it ("Error calling
        # __set_name__": seen once in 80 SIGINTs during `up`'s imports)
        if not caused_by_interrupt(exc):
            raise
        print("kvmlab: interrupted", file=sys.stderr)
        interrupted = True
    except SystemExit as done:
        if done.code != 130:
            raise
        interrupted = True
    finally:
        if prestart is not None:
            # `up` took the QEMU over, or never got to it (bad input, Ctrl-C): then it goes
            prestart.discard()
            prestart.release()
    if interrupted:
        exit_interrupted()


def caused_by_interrupt(exc: BaseException) -> bool:
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 20:
        if isinstance(cause, KeyboardInterrupt):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def exit_interrupted() -> None:
    """Exit status 130, everything tidied. CPython 3.11 ends a process by SIGINT instead,
    whatever its exit status, once a KeyboardInterrupt has left code that exec() ran from
    a string (a dataclass being made during an import: 4 exits in 40 when SIGTERM came
    during `up`'s imports); so the process ends here, without finalization, when no other
    thread is still tidying up (those of `test -j`: then Python ends as usual)."""
    import threading

    if threading.active_count() > 1:
        sys.exit(130)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def __getattr__(name: str) -> Any:
    if name == "main":
        from lab.cli.base import main

        return main
    raise AttributeError(name)
