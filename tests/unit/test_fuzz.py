"""Property-based fuzzing (hypothesis) of what users write: lab configs and scenario files.

Whatever the input, loading either succeeds or raises UserError with one line that names
the file; never another exception (a traceback is a kvmlab bug), never a half-checked
object. Shapes are drawn from the real keys, so most examples reach deep checks rather
than stopping at "unknown key"."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.config import SCHEMA, LabConfig, load_config
from lab.core.errors import UserError
from lab.scenarios import model

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values a user might type anywhere: sizes, numbers, words, nothing, lists, mappings.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 40), 1 << 40), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "2G", "64M", "4K", "0", "-1G", "1T", "0x40000000", "always", "never", "write", "read",
                     "probe", "qemu", "anonymous", "memfd_thp", "hugetlb_2m", ">=5.15", "pause 1", "start",
                     "block", "page", "trixie", "bookworm:6.1.1-1", "/nonexistent/Image", "~/x", "../x"]),
    st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def known_or_any(keys):
    """Mostly keys that exist, sometimes a typo."""
    return st.one_of(st.sampled_from(sorted(keys)), st.text(min_size=1, max_size=10))


config_docs = st.dictionaries(
    known_or_any(SCHEMA),
    st.one_of(values, st.dictionaries(known_or_any({k for s in SCHEMA.values() for k in s}), values, max_size=5)),
    max_size=4)


def _one_line(exc: UserError, where: str) -> None:
    assert "\n" not in exc.message, exc.message
    assert where in exc.message, exc.message
    assert exc.exit_status == 2


@FUZZ
@given(doc=config_docs)
def test_any_config_file_loads_or_is_one_clear_line(doc, tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        config = load_config(path)
    except UserError as exc:
        _one_line(exc, str(path))
    else:
        assert isinstance(config, LabConfig) and 1 <= config.cpus <= 16 and config.memory_mib >= 256


@FUZZ
@given(key=st.sampled_from(["lab.cpus", "lab.memory", "lab.thp", "lab.name", "lab.kernel", "lab.modules"]),
       value=scalars)
def test_any_command_line_value_loads_or_is_one_clear_line(key, value):
    try:
        load_config(None, {key: value})
    except UserError as exc:
        _one_line(exc, f"option --{key.split('.')[1]}")


memslot = st.fixed_dictionaries({"ipa": st.one_of(st.just("1G"), scalars), "size": st.one_of(st.just("8M"), scalars)},
                                optional={"backing": scalars, "offset": scalars, "dirty_log": scalars})
scenario_docs = st.fixed_dictionaries(
    {},
    optional={
        "name": scalars, "description": scalars, "vmm": st.sampled_from(["probe", "qemu", "kvmtool"]),
        "l1": st.dictionaries(known_or_any({"thp", "defrag", "shmem_thp", "hugepages", "khugepaged"}), values,
                              max_size=3),
        "memslots": st.one_of(st.lists(memslot, max_size=3), values),
        "qemu": st.dictionaries(known_or_any({"memory", "backend", "prealloc", "smp"}), values, max_size=3),
        "guest": st.dictionaries(known_or_any({"kind", "base", "size", "stride", "access", "pauses", "order",
                                               "vcpus", "forever", "workload"}), values, max_size=4),
        "actions": st.lists(st.dictionaries(known_or_any({"at", "do", "slot", "size", "every", "offset", "ops"}),
                                            values, max_size=4), max_size=3),
        "expect": st.dictionaries(known_or_any({"regions", "faults", "smaps", "fault_ratio", "clean_log"}), values,
                                  max_size=3),
        "kill_after": scalars, "timeout": scalars, "kernels": scalars, "trace": values,
        "compare_thp": values, "tags": values, "typo": values,
    })


@FUZZ
@given(doc=scenario_docs)
def test_any_scenario_parses_or_is_one_clear_line(doc):
    where = "configs/fuzz/s.yaml"
    try:
        scenario = model.parse(doc, where, Path(where))
    except UserError as exc:
        _one_line(exc, where)
    else:
        # What parses is fit to run: a touched range inside a memslot, sane counts.
        assert 1 <= scenario.guest.vcpus <= 8 and scenario.timeout >= 1
        if scenario.vmm == "probe":
            g = scenario.guest
            assert any(m.ipa <= g.base and g.base + g.size <= m.ipa + m.size for m in scenario.memslots)
        assert scenario.expected_faults() > 0


@pytest.mark.parametrize("load", [load_config, model.load], ids=["config", "scenario"])
@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_a_file_loads_or_is_one_clear_line(load, text, tmp_path):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    try:
        load(path)
    except UserError as exc:
        _one_line(exc, str(path))


# -- actions, drawn from the host-guest contract: its names, keys and values, with typos --
from lab.shared import contract  # noqa: E402 - beside the strategies that use it

ACTION_KEYS = sorted({k for spec in contract.ACTIONS.values() for k in spec.keys} | {"at", "do"})
action_values = st.one_of(
    st.sampled_from(sorted(contract.MADVICE) + list(contract.PROTS) + list(contract.OPS) + list(contract.ACCESSES)
                    + ["start", "end", "pause 1", "pause 5", "4K", "2M", "8M", "64M", "0", "1G", "raed"]),
    st.integers(-5, 1 << 30), st.booleans(), scalars)
op_docs = st.dictionaries(known_or_any({"op", "offset", "size", "every", "advice", "prot"}), action_values, max_size=4)
action_docs = st.dictionaries(
    known_or_any(ACTION_KEYS),
    st.one_of(action_values, st.lists(op_docs, max_size=3)), max_size=5).map(
        lambda d: {"do": d.pop("do", None) or "madvise", **d})


SIZES = st.sampled_from(["4K", "8K", "1K", "2M", "4M", "6M", "8M", "12M", 0, 4096])
KEY_VALUES = {"slot": st.sampled_from([1, 2, 0]), "offset": SIZES, "size": SIZES, "every": SIZES,
              "access": st.sampled_from(["read", "write", "raed"]), "on": st.booleans(),
              "advice": st.sampled_from(["dontneed", "hugepage", "collapse", "dontneeed"]),
              "prot": st.sampled_from(["none", "read", "write", "raed"]), "op": st.sampled_from(list(contract.OPS)),
              "label": st.sampled_from(["x", ""]), "seconds": st.sampled_from([0, 0.1, 1, -1, 4000]),
              "bandwidth": SIZES}


@st.composite
def shaped_action(draw):
    """An action as a user would write one: a real name, some of its keys, plausible values."""
    do = draw(st.sampled_from(sorted(contract.ACTIONS)))
    keys = draw(st.lists(st.sampled_from(contract.ACTIONS[do].keys or ("at",)), unique=True, max_size=4))
    action = {"do": do, "at": draw(st.sampled_from(["start", "end", "pause 1"]))}
    for key in keys:
        if key == "ops":
            action["ops"] = draw(st.lists(st.fixed_dictionaries(
                {"op": st.sampled_from(list(contract.OPS))},
                optional={k: KEY_VALUES[k] for k in ("offset", "size", "every", "advice", "prot")}), max_size=2))
        elif key in KEY_VALUES:
            action[key] = draw(KEY_VALUES[key])
    return action


@FUZZ
@given(actions=st.lists(st.one_of(action_docs, shaped_action()), min_size=1, max_size=3))
def test_any_action_is_checked_against_the_contract_or_is_one_clear_line(actions):
    """What parses holds only keys the contract gives its action, values it accepts, and
    ranges inside their memslot; L1 would decode it as it was sent."""
    where = "configs/fuzz/a.yaml"
    doc = {"memslots": [{"ipa": "1G", "size": "8M"}], "guest": {"pauses": [1], "access": ["write", "write"]},
           "actions": actions}
    try:
        scenario = model.parse(doc, where, Path(where))
    except UserError as exc:
        _one_line(exc, where)
        return
    for action in scenario.actions:
        assert set(contract.action_json(action)) <= {"do", "at", *contract.ACTIONS[action.do].keys}
        assert contract.check_action(contract.action_json(action), "a", "probe") == action
        for op in ([action.as_op()] if action.do in (*contract.OPS, "prefault", "churn") else []) + action.ops:
            assert 0 <= op.offset < 8 << 20 and (op.size is None or op.offset + op.size <= 8 << 20)


@FUZZ
@given(doc=config_docs.filter(bool), shared=values.filter(lambda v: isinstance(v, (list, dict)) and v))
def test_a_file_with_yaml_aliases_is_refused_in_one_line(doc, shared, tmp_path):
    """The same node twice in a document is dumped as an anchor and an alias: refused."""
    section = next(iter(doc))
    doc = {**doc, "alias-a": shared, "alias-b": shared}
    path = tmp_path / "aliased.yaml"
    path.write_text(yaml.dump(doc))
    assert "*" in path.read_text()
    with pytest.raises(UserError) as info:
        load_config(path)
    _one_line(info.value, str(path))
    assert "a YAML alias" in info.value.message, (section, info.value.message)
