"""What `kvmlab test` prints: one line per scenario as it finishes, then the table and the
evidence of every scenario that did not pass."""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from lab.machine.lab import Lab
from lab.core.progress import stamp
from lab.scenarios.model import Scenario
from lab.scenarios.runner import Runner, ScenarioResult

STYLE = {"pass": "green", "fail": "bold red", "error": "bold red", "skip": "yellow"}


def results_dir(base: str | None, label: str) -> Path:
    root = Path(base or os.environ.get("KVMLAB_RESULTS") or "kvmlab-results").expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{label}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{label}-{n}"
    return path


def _console() -> Console:
    return Console(width=max(120, Console().width), highlight=False)


def print_list(scenarios: list[Scenario], suites: dict[str, Path]) -> None:
    click.echo("Suites: " + ", ".join(f"{name} ({len(list(p.glob('*.yaml')))})" for name, p in suites.items()))
    table = Table("scenario", "vmm", "L1 THP", "expected", "description", box=None)
    for s in scenarios:
        table.add_row(s.name, s.vmm, s.l1.get("thp") or "-", s.expected, s.description)
    _console().print(table)


def run_suite(lab: Lab, scenarios: list[Scenario], targets: tuple[str, ...], results: str | None, progress,
              verbose: bool = False, helpers: list | None = None) -> dict[str, Any]:
    label = re.sub(r"[^a-z0-9_.-]+", "-", "-".join(Path(t).stem for t in targets) or "thp")[:40]
    out = results_dir(results, label)
    total = len(scenarios)
    done = [0]
    bar = None

    def on_start(scenario: Scenario) -> None:
        if bar is not None:
            bar.start(scenario.name)

    def on_result(r: ScenarioResult) -> None:
        done[0] += 1
        if bar is not None:
            bar.advance()
        tag = r.status.upper()
        click.echo(stamp(f"[{done[0]}/{total}] {tag:<5} {r.name}  {r.observed or ''}  ({r.seconds:.1f} s)"))
        if r.status != "pass" and r.reasons:
            click.echo(f"        {r.reasons[0]}")

    state = lab.state() or {}
    click.echo(f"Running {total} scenario{'s' if total != 1 else ''} on lab '{lab.name}' "
               f"({state.get('ready', {}).get('release', '?')}); results in {out}")
    runner = Runner(lab, out, on_result=on_result, on_start=on_start, progress=progress,
                    targets=[Path(t).stem if t.endswith((".yaml", ".yml")) else t for t in targets])
    with progress.bar(f"{label} on {lab.name}", total) as bar:
        summary = runner.run(scenarios, helpers)
    print_table(summary, verbose)
    return summary


def print_table(summary: dict[str, Any], verbose: bool = False) -> None:
    console = _console()
    table = Table("scenario", "expected", "observed", "faults", "block/page", "verdict", "s",
                  title=f"{summary['kernel']} ({summary['release']}), {summary['qemu_version']}")
    for s in summary["scenarios"]:
        counts = s.get("counts") or {}
        blocks = counts.get("block", 0) + counts.get("block-1g", 0)
        pages = counts.get("page", 0) + counts.get("split", 0)
        table.add_row(s["name"], s["expected"], s["observed"] or "-", str(s["faults"]),
                      f"{blocks}/{pages}" if counts else "-",
                      f"[{STYLE[s['status']]}]{s['status'].upper()}[/]", f"{s['seconds']:.1f}")
    console.print(table)
    for s in summary["scenarios"]:
        if verbose or s["status"] != "pass":
            lines = [r for r in s["reasons"] if "\n" not in r]
            blocks = [r for r in s["reasons"] if "\n" in r]  # a crash report, a console tail
            console.print(f"[{STYLE[s['status']]}]{s['status'].upper()}[/] {rich_escape(s['name'])}: "
                          + rich_escape("; ".join(lines)), soft_wrap=True)
            for block in blocks:
                console.print(rich_escape(textwrap.indent(block, "    ")), soft_wrap=True)
            if s["status"] != "pass":
                console.print(f"    artefacts: {s['artefacts']}", soft_wrap=True)
    c = summary["counts"]
    died = summary.get("lab_died")
    if died:
        console.print(f"[bold red]The lab died during {died['during']}[/]"
                      + (f"; not run: {', '.join(died['not_run'])}" if died.get("not_run") else "")
                      + "; what ran is kept. The lab is down: `kvmlab up` starts it again.", soft_wrap=True)
    console.print(f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped "
                  f"in {summary['seconds']:.1f} s; results: {summary['results_dir']}", soft_wrap=True)
