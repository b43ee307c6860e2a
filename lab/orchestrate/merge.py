"""`kvmlab report DIR...`: several results directories as one report and one verdict: the
shards of one run (`kvmlab test --shard K/N` on N CI runners), and the runs of several
kernels (one CI job per kernel and shard) as a matrix.

Runs are grouped by kernel (and KVM mode); each group's shards are merged in the suite's
order. A shard whose directory is missing leaves its scenarios as errors ("not run"), so
a merged verdict can never pass on part of a suite; a scenario found twice is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lab.core.errors import UserError
from lab.core.status import BAD, ERROR, count
from lab.orchestrate.matrix import rows_of
from lab.results.load import Matrix, Run, load
from lab.scenarios import shard as shards


def label_of(run: Run) -> str:
    """The kernel, and the KVM mode when it is not the default VHE ('trixie-nvhe')."""
    label = str(run.summary.get("kernel") or "?")
    mode = str(run.summary.get("kvm_mode") or "VHE")
    if mode != "VHE":
        label += "-" + re.sub(r"[^a-z0-9]+", "-", mode.lower()).strip("-")
    return label


def merge(paths: list[str | Path]) -> Run | Matrix:
    loaded: list[tuple[str, Run]] = []
    for path in paths:
        results = load(path)
        if isinstance(results, Matrix):
            loaded += [(label, run) for label, run in results.runs.items()]
        else:
            loaded.append((label_of(results), results))
    groups: dict[str, list[Run]] = {}
    for label, run in loaded:
        groups.setdefault(label, []).append(run)
    merged = {label: merge_runs(runs) for label, runs in groups.items()}
    if len(merged) == 1:
        return next(iter(merged.values()))
    kernels = [{"spec": label, "label": label, "release": run.summary.get("release", ""),
                "lab": run.summary.get("lab", ""), "results_dir": ", ".join(run.summary["merged_from"]),
                "error": "", "skipped": "", "seconds": run.summary.get("seconds", 0), "passed": run.passed}
               for label, run in merged.items()]
    table = rows_of([(label, {"scenarios": run.scenarios}) for label, run in merged.items()])
    matrix: dict[str, Any] = {
        "targets": next(iter(merged.values())).summary.get("targets", []), "kernels": kernels,
        "scenarios": table, "differing": [r["name"] for r in table if r["differs"]],
        "unmeasured": [r["name"] for r in table if r["unmeasured"]],
        "jobs": len(paths), "seconds": max(k["seconds"] for k in kernels),
        "results_dir": ", ".join(str(p) for p in paths), "passed": all(k["passed"] for k in kernels),
    }
    return Matrix(Path(paths[0]), matrix, merged)


def merge_runs(runs: list[Run]) -> Run:
    """One kernel's runs (the shards of one suite run) as one Run."""
    first = runs[0]
    if len(runs) == 1 and "shard" not in first.summary:
        first.summary.setdefault("merged_from", [str(first.path)])
        return first
    releases = {r.summary.get("release") for r in runs}
    if len(releases) > 1:
        raise UserError(f"{first.path}, ...: the runs of {label_of(first)} are of different releases "
                        f"({', '.join(sorted(map(str, releases)))}); shards of one run share a kernel")
    _records(runs)  # shards of one run, or no shards at all: checked before anything else
    homes: dict[str, Path] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for run in runs:
        for scenario in run.scenarios:
            if scenario["name"] in homes:
                raise UserError(f"{scenario['name']}: in both {homes[scenario['name']]} and {run.path}; "
                                "give each shard's directory once")
            homes[scenario["name"]] = run.path
            by_name[scenario["name"]] = scenario
    order, missing = _order(runs, by_name)
    scenarios = [by_name[name] for name in order if name in by_name]
    for name, why in missing:
        scenarios.insert(order.index(name), {
            "name": name, "description": "", "expected": "", "status": ERROR.value, "observed": "",
            "faults": 0, "counts": {}, "seconds": 0.0, "reasons": [why], "checks": [], "artefacts": "",
            "timings": {}, "source": "", "regions": [], "maps": []})
    statuses = [s["status"] for s in scenarios]
    summary = {**first.summary, "scenarios": scenarios, "counts": count(statuses),
               "passed": not any(s in BAD for s in statuses), "merged_from": [str(r.path) for r in runs],
               "seconds": round(max(float(r.summary.get("seconds", 0)) for r in runs), 2),
               "results_dir": ", ".join(str(r.path) for r in runs)}
    summary.pop("shard", None)
    return Run(first.path, summary, scenarios, homes, {k: v for r in runs for k, v in r.dirs.items()})


def _order(runs: list[Run], present: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """The suite's order, and the scenarios of the shards not given (with why)."""
    records = _records(runs)
    if not records:
        return [name for r in runs for name in (s["name"] for s in r.scenarios)], []
    of, n, seconds = records[0]["of"], records[0]["n"], records[0].get("seconds", {})
    given = [rec["k"] for rec in records]
    missing = []
    for k, names in enumerate(shards.split(of, n, seconds), start=1):
        if k in given:
            continue
        missing += [(name, f"not run: shard {k}/{n}'s results are not among the directories given")
                    for name in names if name not in present]
    return of, missing


def _records(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs' shard records: all of one run (the same suite, the same N, each K once), or none."""
    found = [r.summary.get("shard") for r in runs]
    records: list[dict[str, Any]] = [rec for rec in found if isinstance(rec, dict)]
    if not records:
        return []
    if len(records) < len(runs):
        raise UserError("some of these directories are shards (--shard) and some are not: merge the shards "
                        "of one run")
    if any(rec.get("of") != records[0].get("of") or rec.get("n") != records[0].get("n") for rec in records):
        raise UserError("these shards are of different runs (another suite, or another N in --shard K/N)")
    given = [rec.get("k") for rec in records]
    if len(set(given)) != len(given):
        raise UserError(f"shard {max(given, key=given.count)}/{records[0].get('n')} is given twice")
    return records
