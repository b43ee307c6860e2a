"""The mm scenarios' pure parts: mTHP settings and folio expectations as written, the
evidence of what the MMU notifier unmapped at each pause, and the folio check."""

import pytest

from lab.analysis import invalidation
from lab.analysis.ringbuf import Event
from lab.analysis.trace import from_events
from lab.analysis.verdict import folio_check
from lab.core.errors import UserError
from lab.scenarios import model
from lab.shared.contract import ContractError, check_action

SLOT = {"slot": 1, "ipa": 1 << 30, "size": 16 << 20, "backing": "anonymous", "userspace_addr": 0x7F0000000000}
BASE = SLOT["userspace_addr"]


def scenario(**keys):
    return model.parse({"memslots": [{"ipa": "1G", "size": "16M"}], **keys}, "s.yaml")


def test_mthp_settings_are_kib_keyed_and_checked():
    s = scenario(l1={"mthp": {"64K": "always", "2M": "never"}, "shmem_mthp": {"64K": "within_size"}})
    assert s.l1["mthp"] == {"64": "always", "2048": "never"} and s.l1["shmem_mthp"] == {"64": "within_size"}


@pytest.mark.parametrize("l1, words", [
    ({"mthp": {"4K": "always"}}, "l1.mthp.4K: unknown key; known keys: 8K, 16K"),
    ({"mthp": {"64K": "within_size"}}, "l1.mthp.64K: expected one of always, inherit, madvise, never"),
    ({"shmem_mthp": {"64K": "madvise"}}, "l1.shmem_mthp.64K: expected one of always, inherit, within_size"),
    ({"mthp": {"64K": None}}, "l1.mthp.64K: expected one of"),
    ({"mthp": "64K"}, "l1.mthp"),
])
def test_bad_mthp_settings_name_the_key(l1, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        scenario(l1=l1)


def test_folio_expectations():
    s = scenario(expect={"folios": {"64K": 256, "2M": [0, 1]}})
    assert s.folios == {65536: (256, 256), 2 << 20: (0, 1)}
    for bad, words in (({"3K": 1}, "expect.folios.3K: .*a power of two from 4K"),
                       ({"96K": 1}, "expect.folios.96K"), ({"64K": "many"}, "expect.folios.64K"), ([], "expect.folios")):
        with pytest.raises(UserError, match=words):
            scenario(expect={"folios": bad})


def test_folio_check_says_what_backs_the_memslot():
    ok = folio_check({65536: (256, 256), 2 << 20: (0, 0)}, {"65536": 256})
    assert ok == {"check": "folios", "ok": True, "text": "VMM folios: 256 × 64 KiB"}
    bad = folio_check({65536: (256, 256)}, {"4096": 4096})
    assert not bad["ok"] and bad["text"] == "VMM folios: 4096 × 4 KiB (not as expected: 64 KiB: 0, expected 256)"
    assert not folio_check({4096: (1, 1)}, None)["ok"]


@pytest.mark.parametrize("action", [{"do": "collapse", "slot": 1, "size": 2 << 20}, {"do": "khugepaged", "seconds": 5},
                                    {"do": "compact"}, {"do": "split", "slot": 1, "offset": 0}])
def test_mm_actions_are_in_the_contract(action):
    assert check_action({"at": "pause 1", **action}, "actions[0]", "probe").do == action["do"]


def test_mm_actions_take_only_their_keys():
    with pytest.raises(ContractError, match="actions.0..advice"):
        check_action({"do": "compact", "advice": "hugepage"}, "actions[0]", "probe")
    with pytest.raises(ContractError, match="an action the qemu VMM does"):
        check_action({"do": "split"}, "actions[0]", "qemu")


def events(*items):
    out = []
    for ts, what in enumerate(items):
        if isinstance(what, str):
            out.append(Event(0, ts, "print", 1, {"buf": what + "\n"}))
        else:
            out.append(Event(0, ts, "kvm_unmap_hva_range", 1, {"start": what[0], "end": what[1]}))
    return out


def test_unmaps_between_pause_and_phase_markers_are_the_actions():
    two_m = 2 << 20
    trace = from_events(events("kvmlab: phase 0", (BASE, BASE + two_m),  # before the pause: not the action's
                               "kvmlab: pause 1", (BASE, BASE + two_m), (BASE, BASE + two_m),  # the same range twice
                               (BASE + two_m, BASE + 2 * two_m), (0x1000, 0x2000),  # and one outside the memslot
                               "kvmlab: phase 1", "kvmlab: pause 2", "kvmlab: phase 2"))
    assert invalidation.at_pauses(trace, BASE, SLOT["size"]) == {1: (3, 2 * two_m), 2: (0, 0)}
    lines = invalidation.describe(trace, {"memslots": [SLOT]}, {1: ["split"], 2: ["compact"]}, recorded=True)
    assert lines == ["pause 1 (split): the MMU notifier unmapped 4 MiB of memslot 1 in 3 ranges",
                     "pause 2 (compact): the MMU notifier unmapped nothing of memslot 1"]
    assert invalidation.describe(trace, {"memslots": [SLOT]}, {1: ["split"]}, recorded=False) == []


def test_a_probe_that_found_no_guest_memfd_makes_the_scenario_na():
    from lab.analysis.verdict import evaluate
    from lab.core.status import NA

    s = scenario(memslots=[{"ipa": "1G", "size": "16M", "backing": "guest_memfd"}],
                 expect={"regions": [{"mapping": "page"}]})
    why = "this kernel's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0)"
    v = evaluate(s, "6.12.117+deb13-arm64", {"vmm": {"exit_code": 0}}, None, {"na": why, "error": None}, [])
    assert v.status == NA and v.reasons == [why]


def test_eager_split_is_a_block_size_for_the_probe():
    assert scenario(eager_split="2M").eager_split == 2 << 20
    assert scenario().eager_split == 0
    for bad in ("3M", "64K"):
        with pytest.raises(UserError, match="eager_split: .*a block size of the probe's VM: 4K, 2M or 1G"):
            scenario(eager_split=bad)
    with pytest.raises(UserError, match="eager_split: expected a size such as 4K"):
        scenario(eager_split="lots")


def test_move_pages_takes_a_node_number():
    assert check_action({"do": "move_pages", "at": "pause 1", "node": 1}, "actions[0]").node == 1
    assert check_action({"do": "move_pages", "at": "pause 1"}, "actions[0]").node is None
    for bad in (-1, True, "1"):
        with pytest.raises(ContractError, match="a NUMA node number"):
            check_action({"do": "move_pages", "at": "pause 1", "node": bad}, "actions[0]")
    with pytest.raises(UserError, match="an action the qemu VMM does: sleep, migrate, dirty_rate, got .move_pages."):
        model.parse({"vmm": "qemu", "actions": [{"do": "move_pages", "at": "start"}]}, "s.yaml")
