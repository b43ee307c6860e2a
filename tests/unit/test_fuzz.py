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
