"""`--shard K/N` and `kvmlab report DIR...` (lab/scenarios/shard.py, lab/orchestrate/merge.py):
shards add up to the suite, each scenario exactly once, the same on every machine; merged
shards report exactly what one unsharded run reported (recorded data: tests/data/results)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.core.errors import UserError
from lab.orchestrate.merge import merge
from lab.results.load import Matrix, load
from lab.scenarios import shard, suites

RECORDED = Path(__file__).parents[1] / "data/results/thp-trixie"


def test_shards_add_up_to_the_suite_each_scenario_once_and_are_balanced():
    names = [s.name for s in suites.resolve(["thp"])]
    seconds = shard.durations()
    assert set(names) <= set(seconds), "configs/suites/durations.json lacks some thp scenario"
    for n in range(1, 8):
        parts = shard.split(names, n, seconds)
        assert sorted(x for part in parts for x in part) == sorted(names)
        assert all(part == [x for x in names if x in part] for part in parts)  # the suite's order
        assert parts == shard.split(list(names), n, dict(seconds))  # deterministic
        loads = [sum(seconds[x] for x in part) for part in parts]
        # longest-first: no shard exceeds the mean by more than its longest scenario
        assert max(loads) <= sum(loads) / n + max(seconds[x] for x in names) + 1e-9
    assert shard.share(names, 2, 2, seconds) == shard.split(names, 2, seconds)[1]
    assert "l2-linux-thp" in shard.share(names, 1, 4, seconds)  # the longest goes first, to shard 1


@pytest.mark.parametrize("text", ["0/4", "5/4", "2", "a/b", "2/4/1", "-1/4"])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(UserError, match=f"--shard {text}: write K/N"):
        shard.parse(text)


def shard_dirs(tmp_path: Path, n: int, kernel: str = "trixie") -> list[Path]:
    """The recorded run cut into n shards, as n runners would have written them."""
    summary = json.loads((RECORDED / "summary.json").read_text())
    names = [s["name"] for s in summary["scenarios"]]
    seconds = {name: float(i + 1) for i, name in enumerate(names)}
    out = []
    for k, part in enumerate(shard.split(names, n, seconds), start=1):
        d = tmp_path / f"{kernel}-shard-{k}"
        d.mkdir()
        for name in part:
            if (RECORDED / name).is_dir():
                shutil.copytree(RECORDED / name, d / name)
        mine = {**summary, "kernel": kernel, "lab": f"ci-{k}",
                "scenarios": [s for s in summary["scenarios"] if s["name"] in part],
                "shard": {"k": k, "n": n, "of": names, "seconds": seconds}}
        (d / "summary.json").write_text(json.dumps(mine))
        out.append(d)
    return out


def comparable(run) -> list[tuple]:
    return [(s["name"], s["status"], s.get("observed"), s.get("faults"), json.dumps(s.get("counts"), sort_keys=True),
             json.dumps(s["regions"], sort_keys=True)) for s in run.scenarios]


def test_merged_shards_equal_the_unsharded_run(tmp_path):
    whole = load(RECORDED)
    merged = merge(shard_dirs(tmp_path, 3))
    assert comparable(merged) == comparable(whole)
    assert merged.counts == whole.counts and merged.passed == whole.passed
    name = whole.scenarios[0]["name"]
    assert merged.scenario_dir(name).parent.name.startswith("trixie-shard-")  # its artefacts are found


def test_a_missing_shard_is_reported_as_not_run_and_fails_the_verdict(tmp_path):
    dirs = shard_dirs(tmp_path, 3)
    merged = merge(dirs[:2])
    third = {s["name"] for s in json.loads((dirs[2] / "summary.json").read_text())["scenarios"]}
    lost = [s for s in merged.scenarios if s["name"] in third]
    assert lost and all(s["status"] == "error" and s["reasons"] == [
        "not run: shard 3/3's results are not among the directories given"] for s in lost)
    assert [s["name"] for s in merged.scenarios] == [s["name"] for s in load(RECORDED).scenarios]
    assert not merged.passed


def test_a_shard_given_twice_or_shards_of_another_run_are_refused(tmp_path):
    dirs = shard_dirs(tmp_path, 2)
    with pytest.raises(UserError, match="shard 1/2 is given twice"):
        merge([dirs[0], dirs[0]])
    with pytest.raises(UserError, match="in both"):
        merge([RECORDED, RECORDED])
    with pytest.raises(UserError, match="are shards .* and some are not"):
        merge([dirs[0], RECORDED])


def test_shards_of_several_kernels_are_a_matrix(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    merged = merge(shard_dirs(a, 2, "trixie") + shard_dirs(b, 2, "sid"))
    assert isinstance(merged, Matrix)
    assert [k["label"] for k in merged.matrix["kernels"]] == ["trixie", "sid"]
    assert [r["name"] for r in merged.matrix["scenarios"]] == [s["name"] for s in load(RECORDED).scenarios]
    assert all(set(r["cells"]) == {"trixie", "sid"} for r in merged.matrix["scenarios"])


@pytest.mark.parametrize("kernels", [["trixie"], ["trixie", "sid"]])
def test_kvmlab_report_writes_every_output_of_merged_shards(tmp_path, kernels):
    import subprocess
    import sys

    dirs = []
    for kernel in kernels:
        (tmp_path / kernel).mkdir()
        dirs += shard_dirs(tmp_path / kernel, 2, kernel)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "lab.cli", "report", *map(str, dirs), "--html", str(out / "html"),
                          "--junit", str(out / "junit.xml"), "--json", str(out / "run.json"),
                          "--markdown", str(out / "summary.md")], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2])
    assert run.returncode == (0 if load(RECORDED).passed else 1), run.stderr
    doc = json.loads((out / "run.json").read_text())
    assert doc["kind"] == ("run" if len(kernels) == 1 else "matrix")
    assert (out / "html/index.html").stat().st_size > 0 and (out / "junit.xml").stat().st_size > 0
    names = [s["name"] for s in load(RECORDED).scenarios]
    assert all(name in (out / "summary.md").read_text() for name in names)
