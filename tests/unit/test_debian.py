"""Pure helpers around Debian's packages."""

import subprocess

from lab.builder.debian import Deb, _only_suite_hook
from lab.kernels.arm64 import image_problem


def test_deb_file_names_with_epochs(tmp_path):
    path = tmp_path / "qemu-system-arm_1%3a10.0.13+ds-0+deb13u1_arm64.deb"
    path.write_bytes(b"!<arch>\n")
    deb = Deb.from_file(path)
    assert (deb.name, deb.version, deb.arch) == ("qemu-system-arm", "1:10.0.13+ds-0+deb13u1", "arm64")
    assert len(deb.sha256) == 64


def test_only_suite_hook_keeps_the_suite_alone(tmp_path):
    sources = tmp_path / "etc/apt/sources.list"
    sources.parent.mkdir(parents=True)
    sources.write_text("deb file:///srv/mirror/debian bullseye main\n"
                       "deb [arch=arm64] file:///srv/mirror/debian bullseye-updates main\n"
                       "deb file:///srv/security/debian-security bullseye-security main\n")
    subprocess.run(["sh", "-c", _only_suite_hook("bullseye"), "hook", str(tmp_path)], check=True)
    assert sources.read_text() == "deb file:///srv/mirror/debian bullseye main\n"


def test_image_problem(tmp_path):
    good = tmp_path / "Image"
    good.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 4)
    assert image_problem(good) is None
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    assert "vmlinux" in image_problem(elf)
    assert image_problem(tmp_path / "missing") == "no such file"
    assert image_problem(tmp_path) == "a directory, not a file"


def test_busybox_applet_table():
    from lab.builder.rootfs import busybox_applets

    blob = b"\x7fELF...junk\0" + b"[\0[[\0cat\0insmod\0mount\0sh\0zcat\0\0more junk"
    assert busybox_applets(blob) == ["[", "[[", "cat", "insmod", "mount", "sh", "zcat"]


def test_a_tools_version_line_is_asked_once(tmp_path):
    # a cache key's compiler version: `gcc --version` once per process, not per key
    from lab.builder.debian import version_line

    calls = tmp_path / "calls"
    tool = tmp_path / "fake-gcc"
    tool.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'fake-gcc (Debian 12.2.0-14) 12.2.0'\necho more\n")
    tool.chmod(0o755)
    assert version_line(str(tool)) == "fake-gcc (Debian 12.2.0-14) 12.2.0"
    assert version_line(str(tool)) == "fake-gcc (Debian 12.2.0-14) 12.2.0"
    assert calls.read_text() == "x\n"
