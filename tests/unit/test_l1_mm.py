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


def test_folios_from_pagemap_and_kpageflags(tmp_path):
    # The VMM's ground truth for mTHP, collapse and split, from fake /proc files: the flags
    # of physically consecutive pages are read together, and the counts are the same as
    # page by page.
    import struct

    page, first, n = kvm.PAGE, 16, 40
    pfns: list = [1000 + i for i in range(16)]          # a 64 KiB folio: head, then tails
    pfns += [None, None]                                 # not present
    pfns += [5000, 3000, 3001]                           # three 4 KiB pages, two adjacent
    pfns += [7001 + i for i in range(19)]                # the tail of a folio that began before
    flags = {1000: 1 << mm.KPF_COMPOUND_HEAD, **{1001 + i: 1 << mm.KPF_COMPOUND_TAIL for i in range(15)},
             **{7001 + i: 1 << mm.KPF_COMPOUND_TAIL for i in range(19)}}
    pagemap = tmp_path / "pagemap"
    pagemap.write_bytes(b"\0" * 8 * first + b"".join(
        struct.pack("<Q", 0 if p is None else mm.PRESENT | p) for p in pfns))
    kpageflags = bytearray(8 * 8000)
    for pfn, value in flags.items():
        kpageflags[8 * pfn:8 * pfn + 8] = struct.pack("<Q", value)
    (tmp_path / "kpageflags").write_bytes(bytes(kpageflags))
    got = mm.folios(first * page, n * page, str(pagemap), str(tmp_path / "kpageflags"))
    assert got == {str(16 * page): 1, str(page): 3, str(19 * page): 1}
