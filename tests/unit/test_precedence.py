"""lab/core/precedence.py on real processes: the nice values a lab's QEMU is given."""

import os
import subprocess

import pytest

from lab.core.precedence import BACKGROUND, FOREGROUND, Precedence, autogroup, set_nice

ROOT = os.geteuid() == 0


@pytest.fixture
def sessions():
    """Processes each in a session of its own, as a lab's QEMU is; all reaped at the end."""
    started = []

    def start():
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        started.append(child)
        return child.pid
    yield start
    for child in started:
        child.kill()
        child.wait()


def nice_of(pid):
    """(autogroup nice or None, the process's own nice)."""
    group = None
    if autogroup(pid):
        group = int(open(f"/proc/{pid}/autogroup").read().split()[-1])
    return group, os.getpriority(os.PRIO_PROCESS, pid)


def test_background_and_back_to_the_foreground(sessions):
    pid = sessions()
    set_nice(pid, BACKGROUND)
    group, own = nice_of(pid)
    assert own == BACKGROUND
    assert group in (None, BACKGROUND)
    set_nice(pid, FOREGROUND)
    group, own = nice_of(pid)
    assert group in (None, FOREGROUND)
    if ROOT:
        assert own == FOREGROUND


def test_our_own_autogroup_is_never_changed():
    """A process that shares our autogroup gets only its own nice: ours stays."""
    before = nice_of(os.getpid())[0]
    child = subprocess.Popen(["sleep", "60"])
    try:
        set_nice(child.pid, BACKGROUND)
        assert nice_of(child.pid)[1] == BACKGROUND
        assert nice_of(os.getpid())[0] == before
    finally:
        child.kill()
        child.wait()


def test_the_first_in_is_in_the_foreground_and_the_next_comes_forward(sessions):
    a, b, c = sessions(), sessions(), sessions()
    order = Precedence()
    order.enter(a)
    order.enter(b)
    order.enter(c)
    assert [nice_of(p)[1] for p in (a, b, c)] == [FOREGROUND, BACKGROUND, BACKGROUND]
    order.leave(b)  # not the first: nothing moves
    assert order.foreground() == a
    assert nice_of(c)[1] == BACKGROUND
    order.leave(a)
    assert order.foreground() == c
    if ROOT:
        assert nice_of(c)[1] == FOREGROUND
    if autogroup(c):
        assert nice_of(c)[0] == FOREGROUND
    order.leave(c)
    order.leave(c)  # twice, or a lab that never entered: no error
    order.enter(None)
    assert order.foreground() is None


def test_a_process_that_is_gone_is_no_error(sessions):
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()
    set_nice(child.pid, BACKGROUND)
