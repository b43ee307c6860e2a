"""The probe's collapse action in L1 (images/l1/python/l1/mm.py): MADV_COLLAPSE's EAGAIN
is transient and tried again; anything else, or EAGAIN every time, is the kernel's answer."""

import errno
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images/l1/python"))

from l1 import kvm, mm  # noqa: E402


def fake_madvise(monkeypatch, failures):
    calls = []

    def madvise(addr, size, advice):
        calls.append(advice)
        if failures:
            code = failures.pop(0)
            raise OSError(code, f"madvise({advice}): {errno.errorcode[code]}")

    monkeypatch.setattr(kvm, "madvise", madvise)
    monkeypatch.setattr(mm, "vmstat", lambda prefix: {})
    monkeypatch.setattr(mm.time, "sleep", lambda s: None)
    return calls


def test_a_transient_eagain_is_tried_again_and_counted(monkeypatch):
    calls = fake_madvise(monkeypatch, [errno.EAGAIN, errno.EAGAIN])
    assert mm.collapse(0x1000, 2 << 20) == {"vmstat": {}, "eagain_retries": 2}
    assert calls == ["collapse"] * 3


def test_eagain_every_time_is_the_kernels_answer(monkeypatch):
    calls = fake_madvise(monkeypatch, [errno.EAGAIN] * mm.COLLAPSE_TRIES)
    with pytest.raises(OSError) as raised:
        mm.collapse(0x1000, 2 << 20)
    assert raised.value.errno == errno.EAGAIN and len(calls) == mm.COLLAPSE_TRIES


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOMEM])
def test_other_errors_are_not_tried_again(monkeypatch, code):
    calls = fake_madvise(monkeypatch, [code])
    with pytest.raises(OSError):
        mm.collapse(0x1000, 2 << 20)
    assert calls == ["collapse"]
