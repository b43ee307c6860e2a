"""KVM's debugfs stage-2 dump (lab/analysis/ptdump.py), on a hand-made dump in the format of
arch/arm64/mm/ptdump.c's note_page() with arch/arm64/kvm/ptdump.c's attribute bits."""

from lab.analysis import ptdump
from lab.analysis.mapping import BLOCK, PAGES, SPLIT, Region

DUMP = """\
---[ Guest IPA ]---
0x0000000000000000-0x0000000040000000           1G 1
0x0000000040000000-0x0000000040400000           4M 2   R W px ux AF BLK
0x0000000040400000-0x0000000040401000           4K 3   R W px ux AF
0x0000000040401000-0x0000000040600000        2044K 3
0x0000000040600000-0x0000000040800000           2M 3   R W px ux AF
0x0000000040800000-0x0000000040a00000           2M 2 F R W px ux    BLK
0x0000000040a00000-0x0000010000000000        1023G 2
"""


def test_leaves_by_level_and_validity():
    leaves = ptdump.parse(DUMP)
    assert [(hex(v.start), hex(v.end), v.size) for v in leaves] == [
        ("0x40000000", "0x40400000", 2 << 20), ("0x40400000", "0x40401000", 4096), ("0x40600000", "0x40800000", 4096)]
    assert ptdump.regions(leaves) == {0x40000000: {2 << 20}, 0x40200000: {2 << 20}, 0x40400000: {4096},
                                      0x40600000: {4096}}


def region(start, mapping):
    return Region(start, mapping=mapping)


def test_regions_that_agree_pass_and_unmapped_ones_are_counted_not_judged():
    inferred = {0x40000000: region(0x40000000, BLOCK), 0x40200000: region(0x40200000, BLOCK),
                0x40600000: region(0x40600000, SPLIT), 0x40800000: region(0x40800000, BLOCK)}
    check = ptdump.cross_check({"mmu": DUMP}, inferred)
    assert check["ok"], check
    assert check["counts"] == {"agree": 3, "differ": 0, "absent": 1}
    assert check["text"] == "debugfs shadow stage-2 (1 MMU): 3 regions as the faults say, 1 no longer mapped"


def test_a_region_the_dump_maps_otherwise_fails_naming_both():
    check = ptdump.cross_check({"mmu": DUMP}, {0x40400000: region(0x40400000, BLOCK)})
    assert not check["ok"]
    assert check["text"].endswith("; differ: 0x40400000 dump page, faults block")


def test_two_mmus_are_merged():
    other = "0x0000000041000000-0x0000000041200000           2M 3   R W px ux AF\n"
    check = ptdump.cross_check({"a": DUMP, "b": other}, {0x41000000: region(0x41000000, PAGES)})
    assert check["ok"] and check["counts"]["agree"] == 1 and "(2 MMUs)" in check["text"]
