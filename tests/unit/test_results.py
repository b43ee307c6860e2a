"""Reports from a saved run (tests/data/results: a recorded trixie run of seven scenarios,
one failure and one error made by hand): loading, JUnit against the reporters' schema,
Markdown, the HTML page and its pictures, and `kvmlab report` on good and bad input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from PIL import Image

from lab.core.errors import UserError
from lab.results import figures, html, junit, load, markdown, outputs
from tests.conftest import kvmlab

DATA = Path(__file__).parent.parent / "data"
RUN = DATA / "results" / "thp-trixie"
SCHEMA = DATA / "junit" / "junit.xsd"
NAMES = ["anon-thp-always", "anon-thp-never", "dirty-log-after-blocks", "hugetlb-1g", "l2-linux-thp",
         "memfd-misaligned-first-touch", "vmm-killed"]


@pytest.fixture
def run_copy(tmp_path) -> Path:
    """The recorded run, moved elsewhere (paths inside it must not matter)."""
    return Path(shutil.copytree(RUN, tmp_path / "moved-results"))


@pytest.fixture
def matrix_dir(tmp_path) -> Path:
    """A matrix of two kernels made from the recorded run (the second one all passing)."""
    root = tmp_path / "matrix"
    shutil.copytree(RUN, root / "trixie")
    shutil.copytree(RUN, root / "sid")
    summary = json.loads((root / "sid/summary.json").read_text())
    summary["scenarios"] = [s for s in summary["scenarios"] if s["status"] in ("pass", "skip")]
    summary["kernel"] = "sid"
    (root / "sid/summary.json").write_text(json.dumps(summary))
    def cells(s):
        return {"status": s["status"], "observed": s["observed"], "signature": s["observed"].split(" (")[0],
                "reasons": s["reasons"]}
    first = json.loads((RUN / "summary.json").read_text())["scenarios"]
    matrix = {"targets": ["thp"], "jobs": 1, "seconds": 100.0, "results_dir": str(root), "passed": False,
              "kernels": [{"spec": k, "label": k, "release": r, "lab": f"matrix-{k}", "results_dir": str(root / k),
                           "error": "", "seconds": 50.0, "passed": k == "sid"}
                          for k, r in (("trixie", "6.12.117+deb13-arm64"), ("sid", "7.2.13+deb14-arm64"))],
              "scenarios": [{"name": s["name"], "differs": s["name"] == "anon-thp-never",
                             "cells": {"trixie": cells(s), "sid": cells(s)}} for s in first],
              "differing": ["anon-thp-never"]}
    (root / "matrix.json").write_text(json.dumps(matrix))
    return root


def test_load_completes_scenarios_with_their_verdicts(run_copy):
    run = load.load(run_copy)
    assert [s["name"] for s in run.scenarios] == NAMES
    assert run.counts == {"pass": 4, "fail": 1, "error": 1, "skip": 1} and not run.passed
    always = run.scenarios[0]
    assert len(always["regions"]) == 32 and {r["mapping"] for r in always["regions"]} == {"block"}
    assert always["regions"][0]["kinds"] == {"translation L1": 1}  # no stage-2 tables yet
    assert always["regions"][1]["kinds"] == {"translation L2": 1}
    phases = run.scenarios[2]["maps"]
    assert [m["label"] for m in phases] == ["phase 0", "phase 1"]
    assert {r["mapping"] for r in phases[0]["regions"]} == {"block"}
    assert {r["mapping"] for r in phases[1]["regions"]} == {"split"}
    # artefacts are found where the directory is now, not where the run wrote them
    assert run.artefacts("anon-thp-always") == [run_copy / "anon-thp-always/l1.log",
                                                 run_copy / "anon-thp-always/verdict.json"]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nowhere", "no such results directory"),
    (lambda d: d, "neither summary.json nor matrix.json"),
    (lambda d: (d / "summary.json").write_text("{\"scen") and d, "not valid JSON"),
    (lambda d: (d / "summary.json").write_text("[]") and d, "not a kvmlab summary"),
])
def test_load_refuses_what_is_not_a_results_directory(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load.load(make(tmp_path))


def test_junit_validates_and_counts(run_copy, tmp_path):
    out = junit.write(load.load(run_copy), tmp_path / "junit.xml")
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(out))
    root = ET.parse(out).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("7", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == NAMES
    assert cases["memfd-misaligned-first-touch"].find("failure").get("message").startswith("0/8 regions")
    assert cases["vmm-killed"].find("error") is not None
    assert "\x1b" not in ET.tostring(cases["vmm-killed"], encoding="unicode")  # escape codes made XML-safe
    assert cases["hugetlb-1g"].find("skipped") is not None
    assert cases["anon-thp-always"].find("failure") is None and cases["anon-thp-always"].find("error") is None
    assert cases["anon-thp-always"].get("file") == "configs/thp/anon-thp-always.yaml"  # as recorded
    assert "observed: 32 block (1 fault each)" in cases["anon-thp-always"].find("system-out").text
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["release"].startswith("6.12.") and props["kvm_mode"] == "VHE"


def test_junit_of_a_matrix_has_a_suite_per_kernel(matrix_dir, tmp_path):
    out = junit.write(load.load(matrix_dir), tmp_path / "junit.xml")
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(out))
    suites = ET.parse(out).getroot().findall("testsuite")
    assert [(s.get("tests"), s.get("failures")) for s in suites] == [("7", "1"), ("5", "0")]
    assert {c.get("classname") for c in suites[1].iter("testcase")} == {"kvmlab.thp.sid"}


def test_the_schema_catches_broken_junit(run_copy, tmp_path):
    """The check can fail: a test case without its name is rejected."""
    root = junit.document(load.load(run_copy))
    del root.find("testsuite/testcase").attrib["name"]
    broken = tmp_path / "broken.xml"
    ET.ElementTree(root).write(broken)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(str(SCHEMA)).validate(str(broken))


def test_markdown_summary(run_copy, matrix_dir):
    text = markdown.render(load.load(run_copy))
    assert text.startswith("### kvmlab thp on trixie (6.12.117+deb13-arm64)")
    assert "4 passed, 1 failed, 1 errors, 1 skipped" in text
    for name in NAMES:
        assert f"| {name} |" in text
    assert "**memfd-misaligned-first-touch**" in text and "**vmm-killed**" in text
    table = markdown.render(load.load(matrix_dir))
    assert "| scenario | trixie | sid |" in table and "| anon-thp-never ≠ |" in table


def _non_white(png: Path) -> float:
    histogram = Image.open(png).convert("L").histogram()
    return sum(histogram[:240]) / sum(histogram)


def test_fault_map_colours_each_region(tmp_path):
    regions = [{"start": hex(0x40000000 + i * 0x200000), "mapping": m, "faults": f}
               for i, (m, f) in enumerate([("block", 1)] * 4 + [("page", 512)] * 4)]
    path = figures.fault_map(regions, tmp_path / "map.png")
    image = Image.open(path).convert("RGB")
    colours = {c for _, c in image.getcolors(1 << 16)}
    assert (0x2e, 0x7d, 0x32) in colours and (0x15, 0x65, 0xc0) in colours  # block green, page blue
    assert 0.1 < _non_white(path) < 0.9


def test_fault_map_legend_follows_the_granule():
    # 16 KiB pages: the regions are 32 MiB level-2 blocks, and pages are 16 KiB
    assert figures.legend(32 << 20)["block"] == "32 MiB block" and figures.legend(32 << 20)["page"] == "16 KiB pages"
    assert figures.legend(2 << 20)["block"] == "2 MiB block" and figures.legend(2 << 20)["page"] == "4 KiB pages"


def test_kinds_histogram(tmp_path):
    regions = [{"kinds": {"translation L2": 16, "permission L2": 16}}, {"kinds": {"translation L3": 8176}}]
    assert figures.kinds(regions) == {"translation L2": 16, "permission L2": 16, "translation L3": 8176}
    assert figures.kinds_histogram(regions, tmp_path / "h.png").exists()
    assert figures.kinds_histogram([{"mapping": "block"}], tmp_path / "none.png") is None


def test_html_report(run_copy, tmp_path):
    index = html.write(load.load(run_copy), tmp_path / "report")
    page = index.read_text()
    for name in NAMES:
        assert f'id="scenario-{name}"' in page
    # one map (and histogram) per scenario with regions; phases and THP modes get one each
    figs = sorted(p.name for p in (tmp_path / "report/figures").iterdir())
    assert "anon-thp-always-map.png" in figs and "anon-thp-always-kinds.png" in figs
    assert {"dirty-log-after-blocks-0-map.png", "dirty-log-after-blocks-1-map.png",
            "l2-linux-thp-0-map.png", "l2-linux-thp-1-map.png"} <= set(figs)
    assert not any(f.startswith(("hugetlb-1g", "vmm-killed")) for f in figs)
    for src in page.split('src="')[1:]:
        assert (tmp_path / "report" / src.split('"')[0]).is_file()
    # links reach the artefacts of the results directory, wherever the report is
    for href in [h.split('"')[0] for h in page.split('href="')[1:] if not h.startswith("#")]:
        assert (tmp_path / "report" / href).exists(), href
    assert "&lt;&amp;&gt;" in page and "<&>" not in page  # evidence is escaped


def test_html_rewrites_its_own_report_only(run_copy, tmp_path):
    out = tmp_path / "report"
    html.write(load.load(run_copy), out)
    (out / "index.html").write_text("old")
    html.write(load.load(run_copy), out)
    assert "kvmlab" in (out / "index.html").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a kvmlab report"):
        html.write(load.load(run_copy), other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_html_matrix_links_every_cell(matrix_dir, tmp_path):
    index = html.write(load.load(matrix_dir), tmp_path / "report")
    page = index.read_text()
    assert page.count('data-kernel="trixie"') == 7 and page.count('data-kernel="sid"') == 7
    assert (tmp_path / "report/trixie/index.html").exists() and (tmp_path / "report/sid/index.html").exists()
    assert 'href="sid/index.html#scenario-anon-thp-always"' in page


def test_json_document_is_the_whole_run(run_copy):
    doc = outputs.document(load.load(run_copy))
    assert doc["kind"] == "run" and doc["format"] == "kvmlab-results/1"
    assert len(doc["scenarios"]) == 7 and len(doc["scenarios"][0]["regions"]) == 32
    json.dumps(doc)


def test_report_command(run_copy, tmp_path):
    out = kvmlab("report", str(run_copy), "--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "r.json"),
                 "--html", str(tmp_path / "html"), "--markdown", str(tmp_path / "summary.md"))
    assert out.returncode == 1, out.stderr.decode()  # the saved run has a failure
    stdout = out.stdout.decode()
    assert "memfd-misaligned-first-touch" in stdout and "4 passed, 1 failed, 1 errors, 1 skipped" in stdout
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(tmp_path / "j.xml"))
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "run"
    assert (tmp_path / "html/index.html").exists() and "| vmm-killed |" in (tmp_path / "summary.md").read_text()


def test_report_command_bad_input_is_one_line(tmp_path):
    out = kvmlab("report", str(tmp_path / "nothing"), "--html", str(tmp_path / "html"))
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "no such results directory" in lines[0]
    assert not (tmp_path / "html").exists()


def test_outputs_are_checked_before_anything_runs(tmp_path):
    """A wrong --html is exit 2 at once, not after a suite: nothing is booted or written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    out = kvmlab("test", "thp", "--name", "never-started", "--results", str(tmp_path / "r"), "--html", str(mine))
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not a kvmlab report" in lines[0]
    assert not (tmp_path / "r").exists() and (mine / "notes.txt").read_text() == "keep me"
    out = kvmlab("test", "thp", "--name", "never-started", "--junit", str(tmp_path))
    assert out.returncode == 2 and "--junit" in out.stderr.decode() and "is a directory" in out.stderr.decode()
