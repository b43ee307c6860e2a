"""JUnit XML, the format CI test reporters read (GitLab's test reports, GitHub actions
that publish test results, Jenkins): <testsuites> holding one <testsuite> per kernel, one
<testcase> per scenario.

A failed scenario is a <failure> (message: its first reason), a scenario kvmlab could not
run is an <error>, a skipped one <skipped>; every test case's <system-out> holds the
expectation, the observation, all evidence and where the artefacts are. The layout follows
the schema Jenkins' JUnit plugin publishes (junit-10.xsd); tests/data/junit.xsd checks it.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from lab.core.status import ERROR, FAIL, FLAKY, NA, SKIP, XFAIL
from lab.results.load import Matrix, Run
from lab.shared.files import replacing

FAILURE: dict[str, str] = {FAIL: "failure", FLAKY: "failure", ERROR: "error"}
#: Characters XML 1.0 cannot carry (console output may hold escape sequences).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _suite_name(run: Run) -> str:
    targets = run.summary.get("targets") or ["thp"]
    return f"{'+'.join(targets)} on {run.title}"


def _case(run: Run, scenario: dict, classname: str) -> ET.Element:
    case = ET.Element("testcase", name=scenario["name"], classname=classname, time=f"{scenario.get('seconds', 0):.3f}")
    if scenario.get("source"):
        case.set("file", scenario["source"])
    reasons = scenario.get("reasons") or []
    status = scenario["status"]
    if status in FAILURE:
        element = ET.SubElement(case, FAILURE[status], message=(reasons[0] if reasons else status),
                                type=f"kvmlab.{status}")
        element.text = "\n".join(reasons + [f"{'ok ' if c.get('ok') else 'NOT'} {c.get('text', '')}"
                                            for c in scenario.get("checks", [])])
    elif status in (SKIP, XFAIL, NA):  # a known failure: reported, not a failure of the run
        ET.SubElement(case, "skipped", message={XFAIL: "known failure: ", NA: "n/a: "}.get(status, "")
                      + (reasons[0] if reasons else status))
    out = [f"expected: {scenario.get('expected', '')}", f"observed: {scenario.get('observed') or '-'}",
           f"faults: {scenario.get('faults', 0)}"]
    out += [f"evidence: {r}" for r in reasons]
    out.append(f"artefacts: {run.scenario_dir(scenario['name'])}")
    ET.SubElement(case, "system-out").text = "\n".join(out)
    return case


def suite_element(run: Run, index: int = 0) -> ET.Element:
    s = run.summary
    counts = run.counts
    suite = ET.Element("testsuite", name=_suite_name(run), tests=str(len(run.scenarios)),
                       failures=str(counts["fail"] + counts.get("flaky", 0)), errors=str(counts["error"]),
                       skipped=str(counts["skip"] + counts.get("xfail", 0) + counts.get("n/a", 0)),
                       time=f"{s.get('seconds', 0):.3f}", id=str(index), hostname=socket.gethostname())
    started = s.get("started", "")
    if started:
        # "2026-11-24T17:39:05+0000" -> the xs:dateTime part; a "+0000" offset is not one
        suite.set("timestamp", started[:19])
    props = ET.SubElement(suite, "properties")
    for key in ("lab", "kernel", "release", "kvm_mode", "qemu_version", "l1_cpus", "l1_memory", "l1_hugepages_1g",
                "l1_thp_at_boot"):
        if s.get(key) not in (None, ""):
            ET.SubElement(props, "property", name=key, value=str(s[key]))
    classname = "kvmlab." + ".".join(t.replace(".", "_") for t in (s.get("targets") or ["thp"])) \
        + "." + str(s.get("kernel", "kernel")).replace(".", "_")
    for scenario in run.scenarios:
        suite.append(_case(run, scenario, classname))
    return suite


def document(results: Run | Matrix) -> ET.Element:
    runs = list(results.runs.values()) if isinstance(results, Matrix) else [results]
    root = ET.Element("testsuites", name="kvmlab")
    totals = {"tests": 0, "failures": 0, "errors": 0}  # junit-10 has no "skipped" on <testsuites>
    seconds = 0.0
    for i, run in enumerate(runs):
        suite = suite_element(run, i)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        seconds += float(suite.get("time", "0"))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    for element in root.iter():
        if element.text:
            element.text = clean(element.text)
        for name, attr in element.attrib.items():
            element.set(name, clean(attr))
    return root


def write(results: Run | Matrix, path: Path) -> Path:
    root = document(results)
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return path
