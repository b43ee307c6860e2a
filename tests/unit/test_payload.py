"""The parameter block: the host's packing must match the assembly's offsets."""

import re
import shutil
import struct
from pathlib import Path

import pytest

from lab.builder import payload


def test_layout_matches_touch_s():
    source = (payload.SOURCE_DIR / "touch.S").read_text()
    offsets = {m.group(1): int(m.group(2)) for m in re.finditer(r"\.equ\s+(P_\w+),\s+(\d+)", source)}
    packed = payload.TouchParams(base=0x4000_0000, size=64 << 20, stride=8192, order="scattered", vcpus=3,
                                 uart=0x0900_0000, passes=["read", "write", "read-write"], pauses=[1],
                                 forever=True, l2_tlbi=[1], whole=True).pack()
    assert len(packed) == payload.PARAMS_SIZE
    u64 = lambda name: struct.unpack_from("<Q", packed, offsets[name])[0]  # noqa: E731
    assert packed[:8] == payload.MAGIC
    assert (u64("P_BASE"), u64("P_SIZE"), u64("P_STRIDE"), u64("P_ORDER"), u64("P_NCPUS")) == \
        (0x4000_0000, 64 << 20, 8192, 2, 3)
    assert (u64("P_UART"), u64("P_NPASSES"), u64("P_FOREVER"), u64("P_WHOLE")) == (0x0900_0000, 3, 1, 1)
    flags = struct.unpack_from("<4Q", packed, offsets["P_PASSES"])
    assert flags == (0, payload.PASS_WRITE | payload.PASS_PAUSE | payload.PASS_L2_TLBI,
                     payload.PASS_WRITE | payload.PASS_READ_FIRST, 0)
    assert re.search(r"tbz\s+x14, #3,", source) and payload.PASS_L2_TLBI == 1 << 3  # touch.S tests bit 3
    assert u64("P_COUNTER") == 0 and u64("P_RELEASE") == 0


@pytest.mark.parametrize("kwargs", [{"passes": []}, {"passes": ["write"] * 5}, {"vcpus": 9}, {"size": 0},
                                    {"passes": ["write", "write"], "pauses": [1], "l2_tlbi": [0]}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        payload.TouchParams(**{"base": 0, "size": 4096, **kwargs}).pack()


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-as") is None, reason="needs binutils-aarch64-linux-gnu")
def test_build_and_patch(tmp_path):
    offsets = payload.build(tmp_path)
    blob = (tmp_path / "touch.elf").read_bytes()
    params = payload.TouchParams(base=0x4020_0000, size=1 << 20)
    patched = payload.patched(blob, offsets["touch.elf"], params)
    assert len(patched) == len(blob)
    assert patched[offsets["touch.elf"]:offsets["touch.elf"] + 128] == params.pack()
    with pytest.raises(ValueError):
        payload.patched(blob, offsets["touch.elf"] + 8, params)


def test_l1_helpers_compile_statically_and_missing_arm64_headers_are_named(tmp_path, monkeypatch):
    """A new machine whose cross compiler came without its Recommends has no arm64 libc
    headers: one line naming the package, not gcc's error deep inside the host's headers."""
    from lab.builder import rootfs as build
    from lab.core.errors import UserError

    source = Path(__file__).resolve().parent.parent.parent / "images/l1/src/snaphelper.c"
    binary = tmp_path / "helper"
    build.compile_helper(source, binary)
    assert binary.read_bytes()[:4] == b"\x7fELF" and binary.read_bytes()[18] == 183  # e_machine EM_AARCH64
    monkeypatch.setattr(build, "ARM64_LIBC_HEADERS", tmp_path / "no/include/stdio.h")
    with pytest.raises(UserError, match=r"arm64 C library headers are not installed .* libc6-dev-arm64-cross"):
        build.compile_helper(source, tmp_path / "again")
