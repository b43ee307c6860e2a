"""Inferring block or page per region (2 MiB; 32 MiB with 16 KiB pages) from hand-made faults (see lab/analysis/mapping.py)."""

from lab.analysis.mapping import (
    BLOCK,
    BLOCK_1G,
    G4K,
    MMIO,
    NONE,
    PAGES,
    SPLIT,
    UNKNOWN,
    Fault,
    Granule,
    Touched,
    describe,
    granule_of,
    infer,
    labels,
)

MiB, GiB = 1 << 20, 1 << 30
BASE = 1 * GiB
W_TRANS = {1: 0x93CF8045, 2: 0x93CF8046, 3: 0x93CF8047}
W_PERM = {2: 0x9200004E, 3: 0x9200004F}


def pages(region_start, n, first_level=2):
    """The faults of a region mapped with pages: the first one finds no table at level 3."""
    out = [Fault(region_start, W_TRANS[first_level])]
    out += [Fault(region_start + i * 4096, W_TRANS[3]) for i in range(1, n)]
    return out


def test_one_fault_per_region_is_a_block():
    faults = [Fault(BASE + i * 2 * MiB, W_TRANS[2]) for i in range(32)]
    regions = infer(faults, Touched(BASE, 64 * MiB))
    assert [r.mapping for r in regions.values()] == [BLOCK] * 32
    assert describe(regions) == "32 block (1 fault each)"


def test_a_fault_per_page_is_pages():
    faults = pages(BASE, 512) + pages(BASE + 2 * MiB, 512)
    regions = infer(faults, Touched(BASE, 4 * MiB))
    assert [r.mapping for r in regions.values()] == [PAGES, PAGES]
    assert regions[BASE].evidence() == "512 faults (1 translation L2, 511 translation L3)"


def test_block_then_dirty_logging_is_a_split():
    faults = [Fault(BASE, W_PERM[2])] + [Fault(BASE + i * 4096, W_TRANS[3]) for i in range(1, 512)]
    assert infer(faults, Touched(BASE, 2 * MiB))[BASE].mapping == SPLIT


def test_a_permission_fault_at_level_2_proves_a_block_even_alone():
    assert infer([Fault(BASE, W_PERM[2])], Touched(BASE, 4096))[BASE].mapping == BLOCK


def test_one_page_touched_cannot_tell():
    regions = infer([Fault(BASE, W_TRANS[2])], Touched(BASE, 4096))
    assert regions[BASE].mapping == UNKNOWN


def test_touched_regions_without_faults_are_listed():
    regions = infer([Fault(BASE, W_TRANS[2])], Touched(BASE + 2 * MiB, 4 * MiB), window=(BASE, BASE + 6 * MiB))
    assert regions[BASE + 4 * MiB].mapping == NONE


def test_one_level_1_fault_for_a_whole_gib_is_a_1g_block():
    regions = infer([Fault(BASE + 4096, W_TRANS[1])], Touched(BASE, 64 * MiB, 2 * MiB))
    assert set(r.mapping for r in regions.values()) == {BLOCK_1G}
    assert len(regions) == 32


def test_a_first_region_faulting_at_level_1_is_still_a_2m_block():
    # The first fault of every GiB is at level 1, blocks or not.
    faults = [Fault(BASE, W_TRANS[1])] + [Fault(BASE + i * 2 * MiB, W_TRANS[2]) for i in range(1, 4)]
    regions = infer(faults, Touched(BASE, 8 * MiB))
    assert [r.mapping for r in regions.values()] == [BLOCK] * 4


def test_mmio_is_the_same_page_again_and_again():
    faults = [Fault(0x0900_0000, W_TRANS[1]) for _ in range(19)]
    assert infer(faults)[0x0900_0000].mapping == MMIO


def test_unaligned_head_and_tail():
    start = BASE + 1 * MiB
    faults = pages(BASE + 1 * MiB, 256) + [Fault(BASE + 2 * MiB, W_TRANS[2])] + pages(BASE + 4 * MiB, 256)
    regions = infer(faults, Touched(start, 4 * MiB))
    assert [r.mapping for r in regions.values()] == [PAGES, BLOCK, PAGES]


def test_touched_pages_counts_strides():
    t = Touched(BASE + 1 * MiB, 4 * MiB, 8192)
    assert t.pages_in(BASE, 2 * MiB) == 128
    assert t.pages_in(BASE + 2 * MiB, 2 * MiB) == 256
    assert t.pages_in(BASE + 8 * MiB, 2 * MiB) == 0


def test_with_16k_pages_a_region_is_32m_and_a_page_16k():
    g16 = Granule(16 * 1024)
    assert (g16.block, g16.level1) == (32 * MiB, 64 * GiB) and (G4K.block, G4K.level1) == (2 * MiB, GiB)
    # one fault per 16 KiB page of a 32 MiB region: 2048, the first at level 2
    faults = [Fault(BASE, W_TRANS[2])] + [Fault(BASE + i * 16384, W_TRANS[3]) for i in range(1, 2048)]
    faults += [Fault(BASE + 32 * MiB, W_TRANS[2])]
    regions = infer(faults, Touched(BASE, 64 * MiB), granule=g16)
    assert [(r.start, r.size, r.mapping, len(r.pages)) for r in regions.values()] == \
        [(BASE, 32 * MiB, PAGES, 2048), (BASE + 32 * MiB, 32 * MiB, BLOCK, 1)]
    # the same faults read with 4 KiB pages are 32 regions, the first 16 of them pages
    assert len(infer(faults, Touched(BASE, 64 * MiB))) == 32
    assert labels(g16)[BLOCK] == "32 MiB block" and labels(g16)[PAGES] == "16 KiB pages"


def test_the_granule_comes_from_what_l1_reported():
    assert granule_of(16384) == Granule(16384)
    assert granule_of(None) == G4K and granule_of(12345) == G4K and granule_of(True) == G4K


def test_kvmlab_trace_groups_regions_by_l1_granule():
    from types import SimpleNamespace

    from lab.scenarios.adhoc import analysis_lines

    trace = SimpleNamespace(faults=[Fault(BASE + i * 2 * MiB, W_TRANS[2]) for i in range(32)])
    assert "32 2 MiB regions faulted: 32 block? (1 fault each)" in analysis_lines(trace)
    lines = analysis_lines(trace, 16384)
    assert "2 32 MiB regions faulted: 2 block (16 faults each)" in lines
    assert "  0x000040000000-0x000044000000      2 x block" in lines
