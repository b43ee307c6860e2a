"""`kvmlab bisect`: the first commit at which a scenario goes bad, by `git bisect run`.

Per step (this module run as `python -m lab.orchestrate.bisect STATE`, by git):
  1. the build command, in the source tree: exit 0 and print, as the last line of its
     output, the kernel to boot (an Image or build directory, or a Debian kernel such as
     `bullseye`); any other exit status skips the commit (git's 125);
  2. a lab of that kernel is brought up, the one scenario runs, the lab goes down;
  3. the judgement: `verdict` (default) - the scenario passes: good, fails: bad;
     `observed` - the mapping is the one seen at GOOD: good, else bad.
     A scenario that errors or skips, or an L1 that does not boot, skips the commit.
Every step is kept: RESULTS/steps.jsonl, and RESULTS/NN-COMMIT/ with the scenario's
artefacts. GOOD and BAD are checked first (a bisection from wrong ends finds nothing
true), and the tree is left as it was found (`git bisect reset`), whatever happens.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.core.errors import KvmlabError, LabError, LaunchError, UserError
from lab.core.status import FAIL, PASS
from lab.shared.files import write_json

GOOD, BAD, SKIP = 0, 1, 125
#: Any exit status above 127 makes `git bisect run` stop.
ABORT = 255
JUDGES = ("verdict", "observed")


@dataclass
class Bisection:
    src: Path
    good: str
    bad: str
    scenario: Path
    build_cmd: str
    judge: str
    config: str | None
    lab_name: str
    results: Path

    @property
    def state_file(self) -> Path:
        return self.results / "bisect-state.json"


def git(src: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UserError(f"git {' '.join(args)} in {src}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def default_build_cmd(base: str, fragments: list[str]) -> str:
    cmd = [sys.executable, "-m", "lab.cli", "-q", "kernel", "build", "--src", ".", "--base", base, "--print-image"]
    for fragment in fragments:
        cmd += ["--config-fragment", str(Path(fragment).resolve())]
    return shlex.join(cmd)


def find_scenario(name: str) -> Path:
    """A scenario file, or the name of one in any suite under configs/suites/."""
    from lab.scenarios import suites

    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"--scenario {name}: no such file")
        return path.resolve()
    found = [p for suite in suites.suites().values() for p in suite.glob(f"{name}.yaml")]
    if len(found) != 1:
        raise UserError(f"--scenario {name}: " + ("no scenario of that name" if not found else
                        "in several suites: " + ", ".join(map(str, found)) + "; give the file")
                        + "; `kvmlab test --list` shows the names")
    return found[0]


def check_tree(src: Path, good: str, bad: str) -> tuple[str, str]:
    """The full hashes of GOOD and BAD, after checking the tree can be bisected."""
    if not (src / ".git").exists() and not git(src, "rev-parse", "--git-dir", check=False):
        raise UserError(f"--src {src}: not a git work tree")
    if Path(git(src, "rev-parse", "--absolute-git-dir"), "BISECT_START").exists():
        raise UserError(f"--src {src}: a bisection is already under way there; `git -C {src} bisect reset` first")
    if git(src, "status", "--porcelain", "--untracked-files=no"):
        raise UserError(f"--src {src}: has uncommitted changes; commit or stash them (bisect checks out commits)")
    revs = []
    for option, rev in (("--good", good), ("--bad", bad)):
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise UserError(f"{option} {rev}: not a commit in {src}")
        revs.append(out.stdout.strip())
    if subprocess.run(["git", "-C", str(src), "merge-base", "--is-ancestor", revs[0], revs[1]]).returncode != 0:
        raise UserError(f"--good {good} is not an ancestor of --bad {bad}; give an older good commit")
    if revs[0] == revs[1]:
        raise UserError("--good and --bad are the same commit")
    return revs[0], revs[1]


# -- one step (also what `git bisect run` calls) ---------------------------------------------
def step(b: Bisection, label: str, good_signature: str | None = None,
         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Builds and tests the checked-out commit; returns its record (with `exit`: 0/1/125)."""
    from lab.config import load_config
    from lab.machine.lab import Lab
    from lab.orchestrate.matrix import signature
    from lab.scenarios import model
    from lab.scenarios.runner import Runner

    commit = git(b.src, "rev-parse", "HEAD")
    record: dict[str, Any] = {"commit": commit, "subject": git(b.src, "log", "-1", "--format=%s"), "step": label,
                              "kernel": "", "release": "", "status": "", "observed": "", "signature": "",
                              "reasons": [], "artefacts": ""}
    started = time.monotonic()
    steps = sorted(b.results.glob("[0-9][0-9]-*"))
    out = b.results / f"{len(steps):02d}-{commit[:12]}"
    out.mkdir(parents=True)
    with open(out / "build.log", "w") as log:
        build = subprocess.run(b.build_cmd, shell=True, cwd=b.src, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = [line.strip() for line in build.stdout.splitlines() if line.strip()]
    (out / "build.out").write_text(build.stdout)
    if build.returncode != 0 or not lines:
        why = f"exit status {build.returncode}" if build.returncode else "it printed no kernel"
        record.update(status="build failed", reasons=[f"the build command failed ({why}); see {out / 'build.log'}"],
                      exit=SKIP)
        return _finish(b, record, out, started, echo)
    record["kernel"] = lines[-1]
    lab = Lab(b.lab_name)
    try:
        config = load_config(b.config, {"lab.kernel": lines[-1], "lab.name": b.lab_name})
        info = lab.up(config)
        record["release"] = info.release
        summary = Runner(lab, out).run([model.load(b.scenario)])
        s = summary["scenarios"][0]
        record.update(status=s["status"], observed=s["observed"], signature=signature(s), reasons=s["reasons"],
                      artefacts=s["artefacts"])
    except LaunchError as exc:
        # The console's last lines say why (the lab's own log is gone with the next step's).
        record.update(status="no boot",
                      reasons=[f"L1 did not boot: {exc.message}", *([exc.detail] if exc.detail else [])],
                      exit=SKIP)
        return _finish(b, record, out, started, echo)
    finally:
        if lab.is_up():
            lab.down()
    if record["status"] not in (PASS, FAIL):
        record["exit"] = SKIP
    elif b.judge == "observed":
        # GOOD's own step (no signature yet) is the reference: good by definition.
        record["exit"] = GOOD if good_signature in (None, record["signature"]) else BAD
    else:
        record["exit"] = GOOD if record["status"] == PASS else BAD
    return _finish(b, record, out, started, echo)


def _finish(b: Bisection, record: dict[str, Any], out: Path, started: float, echo) -> dict[str, Any]:
    record["seconds"] = round(time.monotonic() - started, 1)
    record["dir"] = str(out)
    with open(b.results / "steps.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    word = {GOOD: "good", BAD: "bad", SKIP: "skip"}[record["exit"]]
    echo(f"bisect: {record['commit'][:12]} {record['subject'][:50]!r}: "
         f"{record['kernel'] or '-'} {('(' + record['release'] + ') ') if record['release'] else ''}"
         f"{record['status'].upper()} {record['observed']} -> {word} ({record['seconds']:.0f} s)")
    if record["exit"] != GOOD and record["reasons"]:
        echo(f"        {record['reasons'][0]}")
    return record


def _load_state(path: Path) -> tuple[Bisection, str | None]:
    data = json.loads(path.read_text())
    good_signature = data.pop("good_signature", None)
    data["src"], data["scenario"], data["results"] = Path(data["src"]), Path(data["scenario"]), Path(data["results"])
    return Bisection(**data), good_signature


def main(argv: list[str]) -> int:
    """`git bisect run` calls this with the state file; the exit status is the judgement."""
    try:
        b, good_signature = _load_state(Path(argv[0]))
        return step(b, "bisect", good_signature, echo=lambda t: print(t, flush=True))["exit"]
    except KeyboardInterrupt:
        return ABORT
    except KvmlabError as exc:
        print(f"kvmlab bisect: error: {exc.message}", file=sys.stderr, flush=True)
        return ABORT


# -- the whole bisection -------------------------------------------------------------------
def run(b: Bisection, echo: Callable[[str], None]) -> dict[str, Any]:
    good, bad = check_tree(b.src, b.good, b.bad)
    b.results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {"src": str(b.src), "good": good, "bad": bad, "scenario": str(b.scenario),
                              "judge": b.judge, "build_cmd": b.build_cmd, "results_dir": str(b.results)}
    git(b.src, "bisect", "start")
    try:
        ends: dict[str, Any] = {}
        for name, rev, want in (("good", good, GOOD), ("bad", bad, BAD)):
            git(b.src, "checkout", "-q", "--detach", rev)
            record = step(b, name, ends["good"]["signature"] if name == "bad" else None, echo)
            ends[name] = record
            if record["exit"] != want:
                report.update(ends=ends, result="bad ends")
                what = {SKIP: "could not be tested", GOOD: "is good", BAD: "is bad"}[record["exit"]]
                raise LabError(f"--{name} {b.good if name == 'good' else b.bad} {what} "
                               f"({record['status']}{': ' + record['reasons'][0] if record['reasons'] else ''}); "
                               f"nothing to bisect: give a {name} commit that is {name}",
                               detail=f"steps: {b.results / 'steps.jsonl'}")
        state = {"src": str(b.src), "good": b.good, "bad": b.bad, "scenario": str(b.scenario),
                 "build_cmd": b.build_cmd, "judge": b.judge, "config": b.config, "lab_name": b.lab_name,
                 "results": str(b.results), "good_signature": ends["good"]["signature"]}
        b.state_file.write_text(json.dumps(state, indent=2) + "\n")
        git(b.src, "bisect", "bad", bad)
        git(b.src, "bisect", "good", good)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                         os.environ.get("PYTHONPATH")]))}
        cmd = ["git", "-C", str(b.src), "bisect", "run", sys.executable, "-m", "lab.orchestrate.bisect",
               str(b.state_file)]
        output: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              env=env, cwd=b.src) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                if line.startswith(("bisect: ", "        ", "kvmlab")):
                    echo(line.rstrip())
        (b.results / "git-bisect-run.log").write_text("".join(output))
        (b.results / "git-bisect.log").write_text(git(b.src, "bisect", "log", check=False) + "\n")
        text = "".join(output)
        steps = [json.loads(line) for line in (b.results / "steps.jsonl").read_text().splitlines()]
        report["steps"] = steps
        report["ends"] = ends
        if "is the first bad commit" in text:
            first = git(b.src, "rev-parse", "refs/bisect/bad")
            report["result"] = "found"
            report["first_bad"] = first
            report["first_bad_subject"] = git(b.src, "log", "-1", "--format=%s", first)
            report["evidence_bad"] = next(s for s in reversed(steps) if s["commit"] == first)
            report["evidence_good"] = ends["good"]
        elif "only 'skip'ped commits left" in text:
            report["result"] = "ambiguous"
            report["candidates"] = [line.split()[0] for line in output if len(line.split()) == 1
                                    and len(line.strip()) == 40]
        else:
            report["result"] = "aborted"
            report["detail"] = "".join(output[-15:])
    finally:
        report["seconds"] = round(time.monotonic() - started, 1)
        git(b.src, "bisect", "reset", check=False)
        write_json(b.results / "bisect.json", report)
    return report


def _evidence(record: dict[str, Any]) -> str:
    return (f"{record['kernel']} ({record['release'] or '?'}): {record['status'].upper()} {record['observed']}"
            + (f"; {record['reasons'][0]}" if record["reasons"] else ""))


def report_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    steps = report.get("steps", [])
    skipped = sum(1 for s in steps if s["exit"] == SKIP)
    if report["result"] == "found":
        lines.append(f"First bad commit: {report['first_bad']} {report['first_bad_subject']}")
        lines.append(f"  at good {report['good'][:12]}: {_evidence(report['evidence_good'])}")
        lines.append(f"  at first bad {report['first_bad'][:12]}: {_evidence(report['evidence_bad'])}")
    elif report["result"] == "ambiguous":
        lines.append("Only skipped commits are left: the first bad commit is one of "
                     + ", ".join(c[:12] for c in report.get("candidates", [])))
    else:
        lines.append("The bisection stopped before it found a commit: " + report.get("detail", "").strip()[-300:])
    lines.append(f"{len(steps)} steps ({skipped} skipped) in {report['seconds']:.0f} s; "
                 f"results: {report['results_dir']} (bisect.json, steps.jsonl, git-bisect.log)")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
