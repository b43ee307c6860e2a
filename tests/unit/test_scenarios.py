"""Scenario files: the shipped suite loads, and each kind of mistake is one clear line."""

import pytest
import yaml

from lab.core.errors import UserError
from lab.scenarios import model, suites

GOOD = {"memslots": [{"ipa": "1G", "size": "64M"}], "expect": {"regions": [{"mapping": "block"}]}}


def test_the_thp_suite_loads_and_is_big_enough():
    scenarios = suites.resolve(["thp"])
    assert len(scenarios) >= 12
    assert len({s.name for s in scenarios}) == len(scenarios)
    assert all(s.description for s in scenarios)


def test_defaults():
    s = model.parse(GOOD, "x.yaml")
    assert (s.vmm, s.guest.base, s.guest.size, s.guest.stride, s.guest.passes) == \
        ("probe", 1 << 30, 64 << 20, 4096, ["write"])
    assert s.expected == "block"


@pytest.mark.parametrize("change, where", [
    ({"colour": 1}, "x.yaml: colour: unknown key"),
    ({"vmm": "kvmtool"}, "vmm: expected one of probe, qemu, got 'kvmtool'"),
    ({"memslots": [{"ipa": "1G", "size": "64M", "backing": "swap"}]}, "memslots[0].backing: expected one of"),
    ({"memslots": [{"ipa": "1G", "size": "-1"}]}, "memslots[0].size: expected a size"),
    ({"memslots": [{"ipa": "1G", "size": "64M"}, {"ipa": "0x42000000", "size": "2M"}]}, "do not overlap"),
    ({"memslots": [{"ipa": "1G", "size": "3M", "backing": "hugetlb_2m"}]}, "multiples of the 2M huge page"),
    ({"guest": {"vcpus": 0}}, "guest.vcpus: expected an integer from 1 to 8, got 0"),
    ({"guest": {"access": ["write", "jump"]}}, "guest.access: expected read, write, read-write"),
    ({"guest": {"size": "128M"}}, "a touched range inside one memslot"),
    ({"actions": [{"at": "pause 1", "do": "dirty_log"}]}, "pause points the guest reaches"),
    ({"actions": [{"do": "explode"}]}, "actions[0].do: expected one of"),
    ({"expect": {"regions": [{"mapping": "huge"}]}}, "expect.regions[0].mapping: expected one of block"),
    ({"expect": {"regions": [{"mapping": "block", "kernels": "5.15"}]}}, "kernel version conditions"),
    ({"expect": {"regions": [{"mapping": "block", "qemu": "10"}]}}, "QEMU version conditions"),
    ({"timeout": 0}, "timeout: expected a number of seconds"),
    ({"l1": {"thp": "sometimes"}}, "l1.thp: expected one of always, madvise, never"),
])
def test_mistakes_name_the_key_and_value(change, where):
    data = {**GOOD, **change}
    with pytest.raises(UserError) as info:
        model.parse(data, "configs/suites/thp/x.yaml")
    message = info.value.message
    assert message.startswith("configs/suites/thp/x.yaml: ") and where in message, message
    assert "\n" not in message and info.value.exit_status == 2


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("memslots: [\n")
    with pytest.raises(UserError, match=r"bad.yaml: malformed YAML at line"):
        model.load(bad)
    with pytest.raises(UserError, match="no such scenario file"):
        model.load(tmp_path / "none.yaml")


def test_resolve_targets_and_keyword(tmp_path):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(GOOD))
    assert [s.name for s in suites.resolve([str(tmp_path / "mine.yaml")])] == ["mine"]
    assert [s.name for s in suites.resolve([str(tmp_path)])] == ["mine"]
    assert [s.name for s in suites.resolve(["thp"], "anon-thp-*")] == ["anon-thp-always", "anon-thp-never"]
    with pytest.raises(UserError, match="no scenario matches"):
        suites.resolve(["thp"], "nothing-like-this")
    with pytest.raises(UserError, match="not a suite"):
        suites.resolve(["nosuchsuite"])


@pytest.mark.parametrize("spec, release, ok", [
    (">=5.15", "6.12.117+deb13-arm64", True), (">=5.15", "5.10.0-32-arm64", False),
    ("<5.15", "5.10.0-32-arm64", True), (">=6.1,<6.12", "6.1.0-50-arm64", True),
    (">=6.1,<6.12", "6.12.117+deb13-arm64", False), (None, "anything", True),
])
def test_kernel_conditions(spec, release, ok):
    assert model.versions_match(spec, release) is ok


def test_ring_buffer_bounds_follow_one_run_and_a_killed_vmm_s_time():
    by = {s.name: s for s in suites.resolve(["thp"])}
    # an L2 Linux: each run of compare_thp is a job of its own, and its faults are bounded
    # by its RAM (256 MiB: 64 Ki pages, twice each) and its MMIO, not doubled per run
    linux = by["l2-linux-thp"]
    assert linux.compare_thp and linux.expected_faults() == 2 * 65536 + model.LINUX_MMIO_EVENTS
    # a guest that faults forever until it is killed: bounded by the time it may run
    killed = by["vmm-killed"]
    assert killed.guest.forever and killed.kill_after == 1.5
    pages = killed.guest.size // 4096
    assert killed.expected_faults() == int(3.5 * model.MAX_EVENTS_PER_SECOND) + 2 * pages + 10_000
    # ... which is less than its 50 passes would be, and more than the 9.5 k events it took
    assert 9_451 < killed.expected_faults() < pages * 50 * 2
    # an ordinary guest: its pages, twice, and room
    never = by["anon-thp-never"]
    assert never.expected_faults() == never.guest.size // 4096 * 2 + 10_000
