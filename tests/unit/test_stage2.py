"""L2's stage-2 for L3 (lab/shared/stage2.py): descriptors checked by hand against the
Arm ARM's stage-2 format, the tables walked back, and the ranges it refuses; the guest
hypervisor's parameter block against gh.S; a nested scenario's key and its evidence."""

import ast
import re
import shutil
import struct

import pytest

from lab.analysis import nested
from lab.builder import payload
from lab.core.errors import UserError
from lab.scenarios import jobs, l2, model
from lab.shared import contract, stage2
from lab.shared.units import GiB, KiB, MiB

BASE = 0x1010_0000  # the tables' address in L2's IPA space


def test_vtcr_is_39_bit_input_from_level_1_with_4k_granule():
    # T0SZ 25, SL0 1, IRGN0/ORGN0 write-back, SH0 inner, TG0 4K, PS 40-bit, RES1 bit 31
    assert stage2.VTCR == 0x8002_3559


def test_a_2m_block_descriptor_by_hand():
    t = stage2.Tables([stage2.Range(0x4020_0000, 2 * MiB, 0x4020_0000, 2 * MiB)], BASE)
    image = t.image()
    assert len(image) == 2 * 4096  # the root and one level-2 table
    root_entry = struct.unpack_from("<Q", image, 1 * 8)[0]  # 0x40200000 >> 30 = 1
    assert root_entry == (BASE + 4096) | 0b11
    block = struct.unpack_from("<Q", image, 4096 + 1 * 8)[0]  # (0x40200000 >> 21) & 511 = 1
    # output | MemAttr 0b1111 <<2 | S2AP RW 0b11 <<6 | SH inner 0b11 <<8 | AF <<10 | block 0b01
    assert block == 0x4020_07FD
    assert stage2.walk(image, BASE, 0x4021_2345) == (0x4021_2345, 2 * MiB, block)
    assert stage2.walk(image, BASE, 0x4040_0000) is None


def test_4k_pages_1g_blocks_and_a_device_page():
    t = stage2.Tables([stage2.Range(0x4000_0000, 8 * KiB, 0x8000_0000, 4 * KiB),
                       stage2.Range(0x0900_0000, 4 * KiB, 0x0900_0000, 4 * KiB, device=True),
                       stage2.Range(2 * GiB, GiB, 3 * GiB, GiB, writable=False)], BASE)
    image = t.image()
    out, size, desc = stage2.walk(image, BASE, 0x4000_1008)
    assert (out, size, desc & 3) == (0x8000_1008, 4 * KiB, 0b11)
    _, size, uart = stage2.walk(image, BASE, 0x0900_0018)
    # Device-nGnRE (MemAttr 0b0001), RW, inner, AF, page, XN[54:53] = 0b10
    assert size == 4 * KiB and uart == 0x0040_0000_0900_07C7
    out, size, desc = stage2.walk(image, BASE, 2 * GiB + 5)
    assert (out, size, desc & 3, desc >> 6 & 3) == (3 * GiB + 5, GiB, 0b01, 0b01)  # a read-only 1G block
    assert t.vttbr(1) == 1 << 48 | BASE


@pytest.mark.parametrize("ranges, message", [
    ([stage2.Range(0x4010_0000, 2 * MiB, 0x4010_0000, 2 * MiB)], "not aligned"),
    ([stage2.Range(0x4000_0000, 4 * KiB, 0x4000_0000, 8 * KiB)], "leaf"),
    ([stage2.Range(1 << 39, 2 * MiB, 0, 2 * MiB)], "beyond the 39-bit input"),
    ([stage2.Range(1 * GiB, 2 * MiB, 1 * GiB, 2 * MiB), stage2.Range(1 * GiB, 4 * KiB, 1 * GiB, 4 * KiB)],
     "overlaps a block"),
    ([stage2.Range(1 * GiB, 4 * KiB, 1 * GiB, 4 * KiB)] * 2, "mapped twice"),
    ([stage2.Range(1 * GiB, 64 * MiB, 1 * GiB, 4 * KiB)], "more than 8 stage-2 tables"),
])
def test_ranges_it_refuses(ranges, message):
    with pytest.raises(ValueError, match=message):
        stage2.Tables(ranges, BASE, limit=8)


def test_hypervisor_params_match_gh_s():
    source = (payload.SOURCE_DIR / "gh.S").read_text()
    offsets = {m.group(1): int(m.group(2)) for m in re.finditer(r"\.equ\s+(H_\w+),\s+(\d+)", source)}
    packed = payload.HypervisorParams(vttbr=1 << 48 | BASE, vtcr=stage2.VTCR, entry=0x1001_0000, stacks=0x1003_0000,
                                      report=0x1003_0000, tlbi_base=GiB, tlbi_size=4 * MiB, tlbi_step=2 * MiB,
                                      vttbr2=2 << 48 | BASE + 512 * KiB).pack()
    u64 = lambda name: struct.unpack_from("<Q", packed, offsets[name])[0]  # noqa: E731
    assert len(packed) == payload.PARAMS_SIZE and packed[:8] == payload.GH_MAGIC
    assert (u64("H_VTTBR"), u64("H_VTCR"), u64("H_ENTRY"), u64("H_UART"), u64("H_STACKS"), u64("H_REPORT")) == \
        (1 << 48 | BASE, stage2.VTCR, 0x1001_0000, 0x0900_0000, 0x1003_0000, 0x1003_0000)
    assert u64("H_HCR") == 1 | 1 << 31 | 1 << 34  # VM, RW, E2H
    assert (u64("H_TLBI_BASE"), u64("H_TLBI_SIZE"), u64("H_TLBI_STEP"), u64("H_VTTBR2")) == \
        (GiB, 4 * MiB, 2 * MiB, 2 << 48 | BASE + 512 * KiB)
    reports = {m.group(1): int(m.group(2)) for m in re.finditer(r"\.equ\s+(R_\w+),\s+(\d+)", source)}
    assert sorted(reports.values()) == [8 * i for i in range(len(reports))]  # u64s in order, no gap
    probe = ast.parse((payload.SOURCE_DIR.parent / "l1/python/l1/probe.py").read_text())
    names = next(ast.literal_eval(n.value) for n in probe.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "L2_REPORT")
    assert len(names) == len(reports) and 8 * len(names) <= 128  # what l1.probe reads, in gh.S's 128 bytes


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-as") is None, reason="needs binutils-aarch64-linux-gnu")
def test_gh_bin_is_built_with_its_parameter_block_and_2k_aligned_vectors(tmp_path):
    offsets = payload.build(tmp_path)
    blob = (tmp_path / "gh.bin").read_bytes()
    assert blob[offsets["gh.bin"]:offsets["gh.bin"] + 8] == payload.GH_MAGIC
    tables = stage2.Tables([stage2.Range(GiB, 2 * MiB, GiB, 2 * MiB)], BASE)
    params = payload.HypervisorParams(vttbr=tables.vttbr(1), vtcr=stage2.VTCR, entry=1, stacks=2, report=3)
    assert payload.patched(blob, offsets["gh.bin"], params)[offsets["gh.bin"]:][:128] == params.pack()
    with pytest.raises(ValueError, match="KVMLABH1"):
        payload.patched((tmp_path / "touch.bin").read_bytes(), offsets["touch.bin"], params)


NESTED = {"l2_hypervisor": {"leaf": "2M"}, "memslots": [{"ipa": "1G", "size": "16M"}],
          "expect": {"regions": [{"mapping": "block"}]}}


def test_a_nested_scenario_maps_its_memslots_at_their_own_address():
    s = model.parse({**NESTED, "l2_hypervisor": {"leaf": "2M", "stage2": [{"slot": 1, "size": "4M", "leaf": "4K"}]}},
                    "x.yaml")
    ranges = l2.l3_ranges(s.l2_hypervisor, s.memslots)
    data = [(r.ipa, r.size, r.output, r.leaf) for r in ranges if r.ipa >= GiB]
    assert data == [(GiB, 4 * MiB, GiB, 4 * KiB), (GiB + 4 * MiB, 12 * MiB, GiB + 4 * MiB, 2 * MiB)]
    job = jobs.make_probe_job(s, "/run")
    assert job.payload == "/run/gh.bin" and job.el2 is not None
    assert [(b.path, b.offset) for b in job.el2.blobs] == [("/run/touch.bin", l2.GH_L3_CODE),
                                                           ("/run/l2-stage2.bin", l2.GH_TABLES)]
    tables = jobs.l2_stage2(s)
    assert stage2.walk(tables.image(), tables.root, GiB + 5 * MiB)[1] == 2 * MiB
    assert stage2.walk(tables.image(), tables.root, l2.PROBE_CODE_IPA + l2.GH_L3_CODE)[1] == 4 * KiB


@pytest.mark.parametrize("change, where", [
    ({"l2_hypervisor": {"leaf": "16K"}}, "l2_hypervisor.leaf: expected one of 4K, 2M, 1G"),
    ({"l2_hypervisor": {"leef": "2M"}}, "l2_hypervisor.leef: unknown key"),
    ({"l2_hypervisor": {"leaf": "1G"}}, "l2_hypervisor: expected a stage-2 L2 can map: range 0x40000000+0x1000000"),
    ({"l2_hypervisor": {"stage2": [{"slot": 2}]}}, "l2_hypervisor.stage2[0].slot: expected an integer from 1 to 1"),
    ({"l2_hypervisor": {"stage2": [{"offset": "4K", "size": "2M", "leaf": "2M"}]}},
     "l2_hypervisor.stage2[0].offset: expected a size"),
    ({"vmm": "qemu", "memslots": None, "l2_hypervisor": {}}, "l2_hypervisor: expected vmm: probe"),
])
def test_nested_mistakes_are_one_line(change, where):
    with pytest.raises(UserError) as info:
        model.parse({**NESTED, **change}, "configs/suites/nested/x.yaml")
    assert where in info.value.message and "\n" not in info.value.message, info.value.message


def test_the_nested_evidence_names_the_three_counts_and_fails_an_abort_handed_back():
    quiet = [{"hvcs": 2, "s2_aborts": 0}, {"hvcs": 1, "s2_aborts": 0}]
    ok = nested.l2_check(quiet, l3_faults=8, all_faults=11)
    assert ok["ok"] and ok["counts"] == {"l3": 8, "l2_own": 3, "handed_back": 0, "l3_calls": 3, "l2_tlbis": 0,
                                         "by_thread": []}
    abort = [{"hvcs": 1, "s2_aborts": 1, "esr": 0x9200_0047, "far": 0x4080_0000, "hpfar": 0x4080_0000 >> 8}]
    bad = nested.l2_check(abort, 8, 8)
    assert not bad["ok"] and "handed back to L2: 1" in bad["text"] and "L3 IPA 0x40800000" in bad["text"]
    odd = nested.l2_check([{"unexpected": 9, "esr": 0}], 0, 0)
    assert not odd["ok"] and "vector 8" in odd["text"]


def test_a_remap_that_l2_never_invalidated_fails():
    """After the VMM rewrote L2's stage-2 at a pause, L2 must have done its TLBIs (gh.S)."""
    done = nested.l2_check([{"hvcs": 2, "tlbis": 2}], 8, 8, remapped=True)
    assert done["ok"] and "invalidated 2 leaves" in done["text"] and done["counts"]["l2_tlbis"] == 2
    stale = nested.l2_check([{"hvcs": 1, "tlbis": 0}], 8, 8, remapped=True)
    assert not stale["ok"] and "invalidated 0 leaves" in stale["text"]


REMAP = {**NESTED, "guest": {"access": ["write", "write"], "pauses": [1]},
         "l2_hypervisor": {"leaf": "2M", "remap": {"at": "pause 1", "stage2": [{"size": "4M", "leaf": "4K"}]}}}


def test_a_remap_writes_new_tables_at_its_pause_and_l3_asks_l2_to_invalidate():
    s = model.parse(REMAP, "x.yaml")
    assert s.l2_hypervisor.remap == l2.L2Remap(1, [l2.L2Range(1, 0, 4 * MiB, 4 * KiB)])
    before, after = jobs.l2_stage2(s), jobs.l2_stage2(s, remapped=True)
    assert before.root == after.root  # rewritten in place
    assert stage2.walk(before.image(), before.root, GiB + 4 * KiB)[1] == 2 * MiB
    assert stage2.walk(after.image(), after.root, GiB + 4 * KiB)[1:2] == (4 * KiB,)
    assert stage2.walk(after.image(), after.root, GiB + 4 * MiB)[1] == 2 * MiB  # the rest as it was
    job = jobs.make_probe_job(s, "/run")
    assert job.el2.remap == contract.Blob("/run/l2-stage2-remapped.bin", l2.GH_TABLES) and job.el2.remap_at == "pause 1"
    params = jobs.hypervisor_params(s, before)
    assert (params.tlbi_base, params.tlbi_size, params.tlbi_step) == (GiB, 4 * MiB, 2 * MiB)  # one TLBI per old leaf
    flags = struct.unpack_from("<4Q", jobs.touch_params(s).pack(), 64)
    assert flags[:2] == (payload.PASS_WRITE, payload.PASS_WRITE | payload.PASS_PAUSE | payload.PASS_L2_TLBI)
    coalesce = model.parse({**REMAP, "l2_hypervisor": {
        "stage2": [{"size": "4M", "leaf": "4K"}], "remap": {"at": "pause 1", "stage2": [{"size": "4M", "leaf": "2M"}]}}},
        "x.yaml")
    assert jobs.hypervisor_params(coalesce, jobs.l2_stage2(coalesce)).tlbi_step == 4 * KiB


@pytest.mark.parametrize("remap, where", [
    ({"at": "pause 2", "stage2": [{"size": "4M"}]}, "l2_hypervisor.remap.at: expected 'pause N', N from 1 to 1"),
    ({"at": "start", "stage2": [{"size": "4M"}]}, "l2_hypervisor.remap.at: expected 'pause N'"),
    ({"at": "pause 1"}, "l2_hypervisor.remap.stage2: expected the ranges L2 maps anew"),
    ({"at": "pause 1", "stage2": [{"size": "3M", "leaf": "2M"}]}, "l2_hypervisor.remap.stage2[0].size"),
    ({"at": "pause 1", "stage2": [{"size": "4M"}], "tlbi": True}, "l2_hypervisor.remap.tlbi: unknown key"),
])
def test_remap_mistakes_are_one_line(remap, where):
    with pytest.raises(UserError) as info:
        model.parse({**REMAP, "l2_hypervisor": {"leaf": "2M", "remap": remap}}, "configs/suites/nested/x.yaml")
    assert where in info.value.message and "\n" not in info.value.message, info.value.message


def test_a_remap_needs_a_guest_that_pauses():
    with pytest.raises(UserError, match="a guest that pauses"):
        model.parse({**REMAP, "guest": {}}, "x.yaml")


TWO = {**NESTED, "l2_hypervisor": {"leaf": "2M", "vmids": 2}, "guest": {"vcpus": 2, "whole": True}}


def test_two_l3_guests_get_two_roots_and_vmids_and_each_touches_the_whole_range():
    s = model.parse(TWO, "x.yaml")
    assert s.l2_hypervisor.vmids == 2 and s.guest.whole
    job = jobs.make_probe_job(s, "/run")
    assert ("/run/l2-stage2-vmid2.bin", l2.GH_TABLES2) in [(b.path, b.offset) for b in job.el2.blobs]
    first, second = jobs.l2_stage2(s), jobs.l2_stage2(s, second=True)
    assert first.image() != second.image() and second.root == l2.PROBE_CODE_IPA + l2.GH_TABLES2
    for t in (first, second):  # the same translation from either root
        assert stage2.walk(t.image(), t.root, GiB + 3 * MiB)[:2] == (GiB + 3 * MiB, 2 * MiB)
    assert len(first.image()) <= l2.GH_TABLES2 - l2.GH_TABLES  # the first copy ends before the second
    files = jobs.nested_files(s, bytes(256) + payload.GH_MAGIC + bytes(120), 256)
    params = files["gh.bin"][256:256 + 128]
    assert struct.unpack_from("<Q", params, 88)[0] == second.vttbr(2) and second.vttbr(2) >> 48 == 2
    assert struct.unpack_from("<Q", params, 8)[0] >> 48 == 1
    assert jobs.touch_params(s).pack()[120:128] == struct.pack("<Q", 1)


@pytest.mark.parametrize("change, where", [
    ({"guest": {"vcpus": 1}}, "l2_hypervisor.vmids: expected 1, or 2 with guest.vcpus 2 or more"),
    ({"l2_hypervisor": {"vmids": 3}}, "l2_hypervisor.vmids: expected an integer from 1 to 2"),
    ({"guest": {"vcpus": 2, "pauses": [1], "access": ["write", "write"]},
      "l2_hypervisor": {"vmids": 2, "remap": {"at": "pause 1", "stage2": [{"size": "2M"}]}}},
     "l2_hypervisor.remap: expected no remap with vmids: 2"),
])
def test_two_vmid_mistakes_are_one_line(change, where):
    with pytest.raises(UserError) as info:
        model.parse({**TWO, **change}, "configs/suites/nested/x.yaml")
    assert where in info.value.message and "\n" not in info.value.message, info.value.message


def test_the_fault_maps_of_a_nested_run_are_per_level():
    s = model.parse(REMAP, "x.yaml")
    shadow = [{"label": f"phase {p}", "regions": [{"start": hex(GiB + i * 2 * MiB), "mapping": "block", "faults": 1}
                                                    for i in range(8)]} for p in (0, 1)]
    maps = l2.level_maps(s.l2_hypervisor, s.memslots, shadow)
    assert [m["label"] for m in maps] == ["L2's stage-2 for L3 (its leaf per region)",
                                          "L2's stage-2 after its remap at pause 1",
                                          "shadow stage-2, phase 0", "shadow stage-2, phase 1"]
    assert [r["mapping"] for r in maps[0]["regions"]] == ["block"] * 8
    assert [r["mapping"] for r in maps[1]["regions"]] == ["page"] * 2 + ["block"] * 6  # the first 4 MiB as 4K
    assert maps[2]["regions"] == shadow[0]["regions"]


def test_a_read_only_l2_range_is_mapped_with_s2ap_read():
    s = model.parse({**NESTED, "l2_hypervisor": {"leaf": "2M", "stage2": [
        {"slot": 1, "size": "4M", "leaf": "2M", "writable": False}]}}, "x.yaml")
    tables = jobs.l2_stage2(s)
    _, size, ro = stage2.walk(tables.image(), tables.root, GiB)
    _, _, rw = stage2.walk(tables.image(), tables.root, GiB + 4 * MiB)
    assert size == 2 * MiB and ro & (0b11 << 6) == stage2.S2AP_RO and rw & (0b11 << 6) == stage2.S2AP_RW
