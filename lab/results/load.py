"""A saved results directory, read back: one suite run (summary.json) or a matrix
(matrix.json with one suite run per kernel below it).

Every scenario's entry in summary.json is completed with its verdict.json (the per-region
mappings and fault kinds the pictures need). Paths stored in the files are not trusted:
a results directory may have been moved or downloaded from CI, so artefacts are found
relative to the directory itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.errors import UserError
from lab.core.status import BAD, FLAKY, NA, XFAIL, count

#: Files of a scenario's directory that reports link to, in this order.
LINKED = ("command.log", "l1.log", "l2-console.log", "l1-runner.out", "verdict.json", "result.json", "probe.json",
          "job.json")


def flaky_words(counts: dict[str, int]) -> str:
    """"N flaky, " when `kvmlab test --count` found any (older results have no such count)."""
    words = f"{counts.get(FLAKY, 0)} flaky, " if counts.get(FLAKY) else ""
    if counts.get(XFAIL):  # `kvmlab selftests`: failures its known-results file expects
        words += f"{counts[XFAIL]} known failure{'s' if counts[XFAIL] != 1 else ''}, "
    if counts.get(NA):  # scenarios that do not apply to this kernel
        words += f"{counts[NA]} n/a, "
    return words


@dataclass
class Run:
    """One suite on one kernel."""
    path: Path
    summary: dict[str, Any]
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    #: a merged run (`kvmlab report DIR...`): the directory each scenario's artefacts are in
    homes: dict[str, Path] = field(default_factory=dict)
    #: a run whose directory is not named as it is ("demand_paging_test[anonymous]" ->
    #: "demand_paging_test-anonymous", `kvmlab selftests`)
    dirs: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        s = self.summary
        return f"{s.get('kernel', '?')} ({s.get('release', '?')})"

    @property
    def counts(self) -> dict[str, int]:
        statuses = [s["status"] for s in self.scenarios]
        return count(statuses)

    @property
    def passed(self) -> bool:
        return not any(s["status"] in BAD for s in self.scenarios)

    def home(self, name: str) -> Path:
        """The results directory that holds scenario `name`."""
        return self.homes.get(name, self.path)

    def scenario_dir(self, name: str) -> Path:
        return self.home(name) / self.dirs.get(name, name)

    def trace_files(self, name: str) -> list[Path]:
        """The raw traces of a scenario (trace.raw, or cpuN.raw in runs recorded before it;
        one set per run directory)."""
        d = self.scenario_dir(name)
        return sorted(p for pattern in ("trace.raw", "cpu*.raw", "*/trace.raw", "*/cpu*.raw") for p in d.glob(pattern))

    def artefacts(self, name: str) -> list[Path]:
        d = self.scenario_dir(name)
        runs = [d] + sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        out = []
        for run in runs:
            out += [run / f for f in LINKED if (run / f).is_file()]
        return out + self.trace_files(name)


@dataclass
class Matrix:
    """One suite on several kernels: matrix.json and each kernel's Run."""
    path: Path
    matrix: dict[str, Any]
    runs: dict[str, Run] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.matrix.get("passed")) and all(r.passed for r in self.runs.values())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); is the results directory complete?") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the run that wrote it may have been cut short") from None


def load_run(path: Path) -> Run:
    summary = _read_json(path / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("scenarios"), list):
        raise UserError(f"{path / 'summary.json'}: not a kvmlab summary (no 'scenarios' list)")
    run = Run(path, summary)
    for entry in summary["scenarios"]:
        scenario = dict(entry)
        # only the last part of the stored path, and only if it is there: the directory
        # may have moved, and its files are not trusted to point elsewhere
        stored = Path(str(entry.get("artefacts") or "")).name
        if stored and stored != entry["name"] and stored not in (".", "..") and (path / stored).is_dir():
            run.dirs[entry["name"]] = stored
        verdict_file = run.scenario_dir(entry["name"]) / "verdict.json"
        if verdict_file.is_file():
            verdict = _read_json(verdict_file)
            scenario["regions"] = verdict.get("regions", [])
            scenario["maps"] = verdict.get("maps", [])
        scenario.setdefault("regions", [])
        scenario.setdefault("maps", [])
        run.scenarios.append(scenario)
    return run


def load(path: str | Path) -> Run | Matrix:
    """A results directory as `kvmlab test` or `kvmlab matrix` left it."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: no such results directory; `kvmlab test` prints where it keeps results "
                        "(default ./kvmlab-results/STAMP-SUITE)")
    if (path / "matrix.json").is_file():
        matrix = _read_json(path / "matrix.json")
        out = Matrix(path, matrix)
        for kernel in matrix.get("kernels", []):
            label = kernel["label"]
            if (path / label / "summary.json").is_file():
                out.runs[label] = load_run(path / label)
        return out
    if (path / "summary.json").is_file():
        return load_run(path)
    raise UserError(f"{path}: neither summary.json nor matrix.json is there; give a directory that "
                    "`kvmlab test` or `kvmlab matrix` wrote")
