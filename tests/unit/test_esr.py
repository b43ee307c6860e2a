"""ESR_EL2 decoding, on values taken from real traces and built by hand."""

import pytest

from lab.analysis.esr import Esr


@pytest.mark.parametrize("value, kind, level, write, data, text", [
    (0x93CF8046, "translation", 2, True, True, "write: translation L2"),   # recorded: a guest store
    (0x93CF8045, "translation", 1, True, True, "write: translation L1"),
    (0x82000005, "translation", 1, False, False, "instruction fetch: translation L1"),  # recorded: code fetch
    (0x9200004F, "permission", 3, True, True, "write: permission L3"),
    (0x9200004E, "permission", 2, True, True, "write: permission L2"),
    (0x9200000A, "access flag", 2, False, True, "read: access flag L2"),
    (0x92000007, "translation", 3, False, True, "read: translation L3"),
    (0x9200002B, "translation", -1, False, True, "read: translation L-1"),
])
def test_decodes_aborts(value, kind, level, write, data, text):
    esr = Esr(value)
    assert (esr.kind, esr.level, esr.write, esr.is_data) == (kind, level, write, data)
    assert esr.describe() == text


def test_wnr_is_only_for_data_aborts():
    assert Esr(0x82000045).write is False  # bit 6 set on an instruction abort


def test_not_an_abort():
    esr = Esr(0x5A000000)  # EC 0x16: HVC
    assert not esr.is_abort and esr.level is None
    assert "EC 0x16" in esr.describe()
