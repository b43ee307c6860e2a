"""Module dependencies from .modinfo, on hand-made modules shaped like Debian's trees."""

import lzma
import struct

import pytest

from lab.builder.kmod import ModuleTree, modinfo, module_name
from lab.core.errors import ImageError


def elf_module(name: str, depends: str) -> bytes:
    """A minimal ELF64 little-endian file with a .shstrtab and a .modinfo section."""
    shstrtab = b"\0.shstrtab\0.modinfo\0"
    info = f"license=GPL\0depends={depends}\0name={name}\0vermagic=6.12.0 SMP\0".encode()
    body_offset = 64
    shstr_off = body_offset
    info_off = shstr_off + len(shstrtab)
    shoff = (info_off + len(info) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 0xB7, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    data = bytearray(header + shstrtab + info)
    data += b"\0" * (shoff - len(data))
    data += b"\0" * 64  # null section
    data += struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)
    data += struct.pack("<IIQQQQIIQQ", 11, 1, 2, 0, info_off, len(info), 0, 0, 1, 0)
    return bytes(data)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "lib/modules/6.12.0-test"
    modules = {
        "kernel/net/9p/9pnet.ko.xz": ("9pnet", "netfs"),
        "kernel/net/9p/9pnet_virtio.ko.xz": ("9pnet_virtio", "9pnet,virtio_ring"),
        "kernel/fs/9p/9p.ko.xz": ("9p", "9pnet,netfs"),
        "kernel/fs/netfs/netfs.ko.xz": ("netfs", ""),
        "kernel/drivers/input/keyboard/gpio-keys.ko": ("gpio_keys", ""),
        "kernel/drivers/broken/needs-missing.ko": ("needs_missing", "not_there"),
    }
    for rel, (name, deps) in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = elf_module(name, deps)
        path.write_bytes(lzma.compress(raw) if rel.endswith(".xz") else raw)
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_pci.ko\n")
    return ModuleTree(root)


def test_modinfo_reads_depends_and_name():
    info = modinfo(elf_module("9p", "9pnet,netfs"))
    assert info["depends"] == ["9pnet,netfs"]
    assert info["name"] == ["9p"]


def test_modinfo_rejects_non_elf():
    with pytest.raises(ValueError):
        modinfo(b"MZ" + b"\0" * 100)


def test_names_drop_suffix_and_dashes():
    assert module_name("gpio-keys.ko") == "gpio_keys"
    assert module_name("9pnet_virtio.ko.xz") == "9pnet_virtio"


def test_load_order_puts_dependencies_first_and_skips_builtins(tree):
    order = [m.name for m in tree.load_order(["virtio_pci", "9pnet_virtio", "9p"], ["gpio-keys"])]
    assert order == ["netfs", "9pnet", "9pnet_virtio", "9p", "gpio_keys"]


def test_missing_required_module_names_the_chain(tree):
    with pytest.raises(ImageError, match=r"not_there \(needed by needs_missing\)"):
        tree.load_order(["needs_missing"])


def test_missing_optional_module_is_left_out(tree):
    assert [m.name for m in tree.load_order(["netfs"], ["virtio_rng"])] == ["netfs"]


def pack(tmp_path, modules: dict[str, str], recipe: dict):
    """Builder._pack_modules on a hand-made tree: (the initramfs's entries, late/'s order)."""
    from types import SimpleNamespace

    from lab.builder.build import Builder
    from lab.builder.cpio import read_entries

    root = tmp_path / "lib/modules/6.12.0-test"
    for name, deps in modules.items():
        path = root / f"kernel/{name}.ko"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(elf_module(name, deps))
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    work = tmp_path / "work"
    work.mkdir()
    Builder._pack_modules(SimpleNamespace(recipe={"modules": recipe}), root, work)
    return read_entries((work / "modules.cpio").read_bytes()), (work / "late/order").read_text().split()


DEBIAN_6_12 = {"virtio_blk": "", "squashfs": "", "netfs": "", "9pnet": "netfs", "9pnet_virtio": "9pnet",
               "9p": "9pnet,netfs", "gpio_keys": ""}
RECIPE = {"root": ["virtio_pci", "virtio_blk", "squashfs"], "share": ["9pnet_virtio", "9p"], "optional": ["gpio_keys"]}


def chain(entries: dict[str, bytes], name: str) -> list[list[str]]:
    """A chain file's lines, module names without the index and .ko."""
    lines = entries[f"lib/modules/kvmlab/{name}"].decode().splitlines()
    return [[n.split("-", 1)[1][:-3] for n in line.split()] for line in lines]


def test_the_initramfs_loads_the_root_and_share_chains_by_depth(tmp_path):
    entries, late = pack(tmp_path, DEBIAN_6_12, RECIPE)
    assert chain(entries, "root") == [["virtio_blk", "squashfs"]]
    assert chain(entries, "share") == [["netfs"], ["9pnet"], ["9pnet_virtio", "9p"]]
    named = {n.rsplit("/", 1)[1] for n in entries if n.endswith(".ko")}
    assert {n.split("-", 1)[1][:-3] for n in named} == set(DEBIAN_6_12) - {"gpio_keys"}
    for line in chain(entries, "root") + chain(entries, "share"):  # every name in a chain is a file
        assert all(any(n.endswith(f"-{m}.ko") for n in named) for m in line)
    assert [n.split("-", 1)[1] for n in late] == ["gpio_keys.ko"]


def test_a_share_module_that_needs_a_root_module_makes_one_chain(tmp_path):
    modules = dict(DEBIAN_6_12, **{"9pnet": "netfs,squashfs"})  # (not so in any kernel)
    entries, _ = pack(tmp_path, modules, RECIPE)
    assert chain(entries, "root") == [["virtio_blk", "squashfs", "netfs"], ["9pnet"], ["9pnet_virtio", "9p"]]
    assert chain(entries, "share") == []


def test_each_modules_modinfo_is_read_once(tree, monkeypatch):
    # the initramfs's two chains and the whole list all ask for 9pnet and netfs: each is
    # decompressed once, not once per question
    import lab.builder.kmod as kmod

    read = []
    real = kmod.decompress
    monkeypatch.setattr(kmod, "decompress", lambda path: read.append(path.name) or real(path))
    tree.load_order(["9p"])
    tree.load_order(["9pnet_virtio"])
    tree.load_order(["9p", "9pnet_virtio"], ["gpio_keys"])
    assert sorted(read) == ["9p.ko.xz", "9pnet.ko.xz", "9pnet_virtio.ko.xz", "gpio-keys.ko", "netfs.ko.xz"]
