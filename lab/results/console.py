"""What `kvmlab test` prints: one line per scenario as it finishes, then the table and the
evidence of every scenario that did not pass."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Column, Table

from lab.core.progress import stamp
from lab.core.status import ERROR, FAIL, FLAKY, NA, PASS, SKIP, XFAIL
from lab.results.load import flaky_words
from lab.scenarios.model import Scenario
from lab.scenarios.result import ScenarioResult

STYLE: dict[str, str] = {PASS: "green", FAIL: "bold red", FLAKY: "bold magenta", ERROR: "bold red", SKIP: "yellow",
                         XFAIL: "cyan", NA: "dim"}


def _console() -> Console:
    return Console(width=max(120, Console().width), highlight=False)


def print_list(scenarios: list[Scenario], suites: dict[str, Path]) -> None:
    click.echo("Suites: " + ", ".join(f"{name} ({len(list(p.glob('*.yaml')))})" for name, p in suites.items()))
    table = Table("scenario", "vmm", "L1 THP", "expected", "description", box=None)
    for s in scenarios:
        table.add_row(s.name, s.vmm, s.l1.get("thp") or "-", s.expected, s.description)
    _console().print(table)


def result_printer(total: int) -> Callable[[ScenarioResult], None]:
    """Prints one line per scenario as its result comes (and its first reason if not a pass)."""
    done = [0]

    def on_result(r: ScenarioResult) -> None:
        done[0] += 1
        tag = r.status.upper()
        click.echo(stamp(f"[{done[0]}/{total}] {tag:<5} {r.name}  {r.observed or ''}  ({r.seconds:.1f} s)"))
        if r.status != PASS and r.reasons:
            click.echo(f"        {r.reasons[0]}")
    return on_result


def print_start(lab_name: str, release: str, total: int, out: Path) -> None:
    click.echo(f"Running {total} scenario{'s' if total != 1 else ''} on lab '{lab_name}' ({release}); "
               f"results in {out}")


def print_table(summary: dict[str, Any], verbose: bool = False) -> None:
    console = _console()
    table = Table("scenario", "expected", "observed", "faults", "block/page", "verdict", "s",
                  title=f"{summary['kernel']} ({summary['release']}), {summary['qemu_version']}")
    for s in summary["scenarios"]:
        counts = s.get("counts") or {}
        blocks = counts.get("block", 0) + counts.get("block-1g", 0)
        pages = counts.get("page", 0) + counts.get("split", 0)
        table.add_row(rich_escape(s["name"]), rich_escape(s["expected"]), rich_escape(s["observed"] or "-"),
                      str(s["faults"]),
                      f"{blocks}/{pages}" if counts else "-",
                      f"[{STYLE[s['status']]}]{s['status'].upper()}[/]", f"{s['seconds']:.1f}")
    console.print(table)
    for s in summary["scenarios"]:
        if verbose or s["status"] != PASS:
            lines = [r for r in s["reasons"] if "\n" not in r]
            blocks = [r for r in s["reasons"] if "\n" in r]  # a crash report, a console tail
            console.print(f"[{STYLE[s['status']]}]{s['status'].upper()}[/] {rich_escape(s['name'])}: "
                          + rich_escape("; ".join(lines)), soft_wrap=True)
            for block in blocks:
                console.print(rich_escape(textwrap.indent(block, "    ")), soft_wrap=True)
            if s["status"] != PASS:
                console.print(f"    artefacts: {s['artefacts']}", soft_wrap=True)
    c = summary["counts"]
    died = summary.get("lab_died")
    if died:
        console.print(f"[bold red]The lab died during {died['during']}[/]"
                      + (f"; not run: {', '.join(died['not_run'])}" if died.get("not_run") else "")
                      + "; what ran is kept. The lab is down: `kvmlab up` starts it again.", soft_wrap=True)
    console.print(f"{c['pass']} passed, {c['fail']} failed, {flaky_words(c)}{c['error']} errors, {c['skip']} skipped "
                  f"in {summary['seconds']:.1f} s; results: {summary['results_dir']}", soft_wrap=True)


MARK = {PASS: "", FAIL: " ✗", SKIP: "", ERROR: "", XFAIL: " (known)", NA: ""}
CELL_STYLE = {FAIL: "bold red", ERROR: "bold red", SKIP: "yellow", XFAIL: "cyan", NA: "dim"}


def print_matrix(matrix: dict[str, Any]) -> None:
    """`kvmlab matrix`'s table: a row per scenario, a column per kernel (lab/orchestrate/matrix.py)."""
    console = _console()
    kernels = matrix["kernels"]
    table = Table("≠", Column("scenario", no_wrap=True),
                  *[f"{k['label']}\n{k['release'] or '-'}" for k in kernels],
                  title="observed stage-2 mapping per kernel (✗: the scenario's expectation failed; "
                        "≠: kernels differ; ?: not measured on every kernel)")
    for row in matrix["scenarios"]:
        cells = []
        for k in kernels:
            cell = row["cells"].get(k["label"])
            if cell is None:
                cells.append("-")
                continue
            text = cell["signature"] + MARK[cell["status"]]
            style = CELL_STYLE.get(cell["status"], "")
            cells.append(f"[{style}]{rich_escape(text)}[/]" if style else rich_escape(text))
        mark = "[bold magenta]≠[/]" if row["differs"] else "[yellow]?[/]" if row.get("unmeasured") else ""
        table.add_row(mark, rich_escape(row["name"]), *cells)
    console.print(table)
    for k in kernels:
        if k["error"]:
            console.print(f"[bold red]{k['label']}[/]: {rich_escape(k['error'])}", soft_wrap=True)
        if k.get("skipped"):
            console.print(f"[yellow]{k['label']}[/]: skipped: {rich_escape(k['skipped'])}", soft_wrap=True)
    unmeasured = matrix.get("unmeasured", [])
    console.print(f"{len(matrix['differing'])} of {len(matrix['scenarios'])} scenarios differ between kernels"
                  + (f" ({rich_escape(', '.join(matrix['differing']))})" if matrix["differing"] else "")
                  + (f"; {len(unmeasured)} not measured on every kernel ({rich_escape(', '.join(unmeasured))})"
                     if unmeasured else "")
                  + f"; {matrix['seconds']:.0f} s with -j{matrix['jobs']}; results: {matrix['results_dir']}",
                  soft_wrap=True)

