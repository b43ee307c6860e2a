import stat

from lab.builder.cpio import CpioWriter, read_names


def test_entries_parents_and_trailer():
    w = CpioWriter()
    w.add_bytes("lib/modules/kvmlab/order", b"a.ko\n")
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    data = w.getvalue()
    assert read_names(data) == ["lib", "lib/modules", "lib/modules/kvmlab", "lib/modules/kvmlab/order",
                                "bin", "bin/sh", "dev", "dev/console"]
    assert len(data) % 4 == 0


def test_same_input_same_bytes():
    def build():
        w = CpioWriter()
        w.add_bytes("init", b"#!/bin/sh\n", 0o755)
        return w.getvalue()
    assert build() == build()


def test_header_fields():
    w = CpioWriter()
    w.add_bytes("init", b"abc", 0o755)
    data = w.getvalue()
    assert data[:6] == b"070701"
    mode = int(data[14:22], 16)
    assert stat.S_ISREG(mode) and mode & 0o777 == 0o755
    assert int(data[54:62], 16) == 3  # filesize
    assert data[110:115] == b"init\0"


def test_concatenated_archives_are_read_as_one():
    a, b = CpioWriter(), CpioWriter()
    a.add_bytes("x", b"1")
    b.add_bytes("y", b"22")
    assert read_names(a.getvalue() + b.getvalue()) == ["x", "y"]
