"""The host-guest contract (lab/shared/contract.py): every shipped scenario's job survives
the trip into L1, a mistake in an action is refused on the host (exit 2, file and key),
and L1 refuses a job that does not match."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.builder.build import Builder
from lab.core.errors import UserError
from lab.scenarios import model, suites
from lab.scenarios.runner import make_probe_job, scenario_job
from lab.shared import contract
from lab.shared.contract import ContractError, ProbeJob, QemuJob, ScenarioJob, decode, encode

ALL = suites.resolve(list(suites.suites()))
GOOD = {"memslots": [{"ipa": "1G", "size": "64M"}], "guest": {"pauses": [0]},
        "expect": {"regions": [{"mapping": "block"}]}}


@pytest.mark.parametrize("scenario", ALL, ids=[s.name for s in ALL])
def test_every_scenario_job_decodes_as_it_was_sent(scenario):
    qemu = QemuJob(memory=scenario.qemu["memory"], kernel="/k", actions=scenario.actions) if scenario.qemu else None
    job = scenario_job(scenario, qemu=qemu)
    assert decode(ScenarioJob, json.loads(json.dumps(encode(job)))) == job
    if scenario.vmm == "probe":
        probe = make_probe_job(scenario, "/run")
        assert decode(ProbeJob, json.loads(json.dumps(encode(probe)))) == probe


@pytest.mark.parametrize("action, where", [
    ({"do": "prefault", "slot": 1, "acess": "read"}, "actions[0].acess: unknown key"),
    ({"do": "fork_child", "slot": 1, "ops": [{"op": "mprotect", "prot": "raed"}]}, "actions[0].ops[0].prot: expected one of"),
    ({"do": "madvise", "slot": 1, "advice": "dontneeed"}, "actions[0].advice: expected one of"),
    ({"do": "madvise", "slot": 1}, "actions[0].advice: expected"),
    ({"do": "churn", "slot": 1, "op": "madvise", "advice": "dontneed", "evry": "2M"}, "actions[0].evry: unknown key"),
    ({"do": "migrate"}, "actions[0].do: expected an action the probe VMM does"),
    ({"do": "sleep", "seconds": "long"}, "actions[0].seconds: expected a number of seconds"),
    ({"do": "dirty_log", "slot": 1, "on": "yes"}, "actions[0].on: expected true or false"),
    ({"do": "smaps", "at": "pause 9"}, "actions[0].at: expected start, end or 'pause N'"),
    ({"do": "fork_child", "slot": 1, "ops": [{"size": "4K"}]}, "actions[0].ops[0]: expected a mapping with `op`"),
    # ranges that fall outside their memslot (64M here), or off the 4 KiB pages
    ({"do": "madvise", "slot": 1, "advice": "dontneed", "offset": "64M"}, "actions[0].offset: expected an offset inside"),
    ({"do": "munmap", "slot": 1, "offset": "60M", "size": "8M"}, "actions[0].size: expected a size from 4K to 4M"),
    ({"do": "fork_child", "slot": 1, "ops": [{"op": "munmap", "offset": "1K"}]},
     "actions[0].ops[0].offset: expected a multiple of 4K"),
    ({"do": "churn", "slot": 1, "op": "madvise", "advice": "dontneed", "size": "2M", "every": "1M"},
     "actions[0].every: expected a step at least the range's size"),
    ({"do": "prefault", "slot": 1, "size": "4K", "every": 0}, "actions[0].every: expected a step at least"),
])
def test_a_mistake_in_an_action_is_exit_2_naming_the_file_and_key(action, where):
    with pytest.raises(UserError) as info:
        model.parse({**GOOD, "actions": [action]}, "mine.yaml")
    message = info.value.message
    assert message.startswith(f"mine.yaml: {where}"), message
    assert info.value.exit_status == 2 and "\n" not in message


def test_sizes_are_bytes_in_the_job():
    s = model.parse({**GOOD, "actions": [{"do": "madvise", "slot": 1, "advice": "dontneed", "size": "4K",
                                          "every": "2M"}]}, "mine.yaml")
    assert encode(s.actions[0]) == {"do": "madvise", "at": "start", "size": 4096, "every": 2 << 20,
                                    "advice": "dontneed"}


@pytest.mark.parametrize("change, key", [
    ({"bogus": 1}, "job.bogus: unknown key"),
    ({"timeout": "60"}, "job.timeout: expected a number"),
    ({"vmm": "kvmtool"}, "job.vmm: expected one of probe, qemu, command"),
    ({"l1": {"thp": "always", "hugepage": {}}}, "job.l1.hugepage: unknown key"),
    ({"trace": {"events": "kvm:kvm_guest_fault"}}, "job.trace.events: expected a list"),
])
def test_l1_refuses_a_job_that_does_not_match(change, key):
    job = {"name": "x", "vmm": "probe", "timeout": 60.0, **change}
    with pytest.raises(ContractError) as info:
        decode(ScenarioJob, job)
    assert str(info.value).startswith(key), info.value


def test_a_missing_key_is_named():
    with pytest.raises(ContractError, match=r"^probe-job.memslots: expected `memslots`"):
        decode(ProbeJob, {"vcpus": 1, "code_ipa": 0, "payload": "/p", "report": "/r"}, "probe-job")


def test_l1_ships_the_hosts_contract_file_itself_and_rejects_a_bad_job(tmp_path):
    """The tools entry carries lab/shared byte for byte; L1's runner, run from it as L1 runs
    it, writes result.json with the contract error instead of running anything."""
    tools = Builder().tools().path
    assert (tools / "lab/shared/contract.py").read_bytes() == open(contract.__file__, "rb").read()
    assert (tools / "lab/__init__.py").read_text() == ""
    (tmp_path / "job.json").write_text(json.dumps({"name": "x", "vmm": "probe", "timeout": 5, "acess": 1}))
    run = subprocess.run([sys.executable, "-c", "import sys, l1.scenario as s; sys.exit(s.main(sys.argv[1:]))",
                          str(tmp_path / "job.json")], cwd=tools, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert "job.acess: unknown key" in result["error"] and "vmm" not in result


def test_the_reference_names_every_action_its_vmm_and_every_key():
    """configs/suites/README.md's action table is the contract's ACTIONS, row by row."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent.parent / "configs/suites/README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|") for line in readme.splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(contract.ACTIONS)
    for name, spec in contract.ACTIONS.items():
        _, _, vmms, keys, _, _ = rows[name]
        assert [v.strip() for v in vmms.split(",")] == list(spec.vmms), name
        assert set(re.findall(r"`(\w+)`", keys)) == set(spec.keys), name
    for op, keys in contract.OP_KEYS.items():
        assert f"`{op}`" in readme and all(f"`{k}`" in readme for k in keys)
    assert all(advice in readme for advice in contract.MADVICE)


def test_records_are_frozen_with_fresh_defaults_and_compare_by_value():
    a, b = contract.Action("churn"), contract.Action("churn")
    assert a == b and a is not b and a.ops is not b.ops  # a default list made for each record
    assert a.at == "start" and a.bandwidth == 4 * 1024 * 1024
    with pytest.raises(AttributeError):
        a.do = "sleep"  # type: ignore[misc]
    c = contract.codec.replace(a, at="end")
    assert c.at == "end" and c.do == "churn" and c != a
    assert repr(contract.Op("munmap")).startswith("Op(op='munmap', offset=0,")
    with pytest.raises(TypeError, match="missing required argument: 'op'"):
        contract.Op()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'opp'"):
        contract.Op(op="munmap", opp=1)  # type: ignore[call-arg]


def test_l1_imports_the_contract_without_dataclasses_or_inspect():
    # Under TCG those two imports cost L1 0.7 s a scenario (python3 -X importtime there).
    code = ("import sys, lab.shared.contract, lab.shared.files; "
            "print(' '.join(m for m in ('dataclasses', 'inspect', 'pathlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(contract.__file__).parents[2])
    assert out.stdout.strip() == ""


def test_priming_resolves_every_record_s_hints_ahead_of_the_first_decode():
    # L1's runner primes the jobs' hints once; the scenarios it forks then decode with no
    # typing.get_type_hints of their own (0.03-0.05 s each under TCG)
    contract.codec._hints.cache_clear()
    contract.codec.prime(ScenarioJob)
    contract.codec.prime(ProbeJob)
    primed = contract.codec._hints.cache_info().currsize
    assert primed >= 8  # the jobs and the records inside them (memslots, actions, qemu, ...)
    scenario = next(s for s in ALL if s.vmm == "probe" and s.actions)
    decode(ProbeJob, json.loads(json.dumps(encode(make_probe_job(scenario, "/run")))))
    decode(ScenarioJob, json.loads(json.dumps(encode(scenario_job(scenario)))))
    assert contract.codec._hints.cache_info().currsize == primed  # nothing new resolved
