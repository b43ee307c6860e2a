"""kvmlab selftests: the kernel's own KVM selftests, built for L1's kernel and run in L1."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lab.cli.base import (
    bring_up,
    check_outputs,
    kernel_options,
    lab_config,
    main,
    name_option,
    output_options,
    write_outputs,
)
from lab.core.errors import UserError
from lab.core.progress import Progress
from lab.machine.lab import Lab


@main.command("selftests")
@click.argument("tests", nargs=-1)
@click.option("--src", type=click.Path(file_okay=False), help="A kernel tree to build the selftests from (default: "
              "Debian's source of the Debian kernel L1 boots, at its exact version).")
@click.option("-k", "keyword", metavar="PATTERN", help="Only tests whose name contains PATTERN (or matches it).")
@click.option("--backing", "backings", multiple=True, metavar="SRC",
              help="A backing type for the tests that take -s (repeatable; default: the selection file's).")
@click.option("--trace", is_flag=True, help="Record kvm:kvm_guest_fault around each run and judge the mapping of "
              "the test's memory against the selection file's expectation.")
@click.option("--timeout", type=click.FloatRange(1, 3600), help="Seconds per run (default: each test's own).")
@click.option("--all", "run_all", is_flag=True, help="Also the tests kept out of the default selection.")
@click.option("--list", "list_only", is_flag=True, help="List the selection and the known results; run nothing.")
@click.option("--known", type=click.Path(dir_okay=False), help="A known-results file (default: "
              "configs/selftests/known/KERNEL.yaml for the lab's kernel).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config, if the lab must be started.")
@name_option
@kernel_options
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
@click.option("--keep-up", is_flag=True, help="Leave a lab this command started running.")
@click.option("-v", "--verbose", is_flag=True, help="Print every run's evidence, not only failures'.")
@output_options
@click.pass_obj
def selftests(progress: Progress, tests, src, keyword, backings, trace, timeout, run_all, list_only, known, config,
              name, kernel, modules, results, keep_up, verbose, json_file, junit_file, html_dir, markdown_file) -> None:
    """Build the KVM selftests for L1's kernel and run them in L1, one at a time.

    \b
    TESTS: test names (default: configs/selftests/kvm.yaml's default selection).
    kvmlab up && kvmlab selftests --trace
    kvmlab selftests demand_paging_test --backing anonymous_thp --trace
    Uses the running lab, or brings one up and down around the run. Each run is judged by
    its exit status and TAP, by the known results of the lab's kernel, and with --trace by
    the stage-2 mapping of its memory.
    Exit status: 0 as known (passes, and the known skips and failures), 1 otherwise, 2 bad input.
    """
    import dataclasses

    from lab.results import console as report
    from lab.scenarios.suite import results_dir
    from lab.selftests import run as st
    from lab.selftests import selection as sel

    chosen = sel.load_selection()
    for backing in backings:
        if backing not in sel.BACKINGS:
            raise UserError(f"--backing {backing}: not a backing type of the selftests; give one of "
                            f"{', '.join(sel.BACKINGS)}")
    runs = st.plan(chosen, list(tests), keyword, list(backings) or None, run_all)
    if timeout:
        runs = [dataclasses.replace(r, test=dataclasses.replace(r.test, timeout=timeout)) for r in runs]
    check_outputs(json_file, junit_file, html_dir, markdown_file)
    cfg = lab_config(config, name=name, kernel=kernel, modules=modules)
    if list_only:
        _print_list(chosen, runs, sel.load_known(cfg.kernel_spec.label, Path(known) if known else None))
        return
    if not runs:
        raise UserError(f"no selftest matches {' '.join(tests) or keyword!r}; `kvmlab selftests --list` shows them")
    with Lab(cfg.name, progress) as lab:
        bring_up(lab, cfg, kernel, keep_up)
        out = results_dir(results, "selftests")
        summary = st.run_on_lab(lab, runs, out, trace, Path(src) if src else None, Path(known) if known else None,
                                config, progress, report.result_printer(len(runs)), click.echo)
        report.print_table(summary, verbose)
    write_outputs(summary["results_dir"], json_file, junit_file, html_dir, markdown_file, progress)
    sys.exit(0 if summary["passed"] else 1)


def _print_list(selection, runs, known) -> None:
    click.echo(f"Selection: {selection.path}; default backings: {', '.join(selection.backings)}")
    click.echo(f"Known results: {known.path or 'none (every test is expected to pass)'}")
    for r in runs:
        k = known.of(r.test.name, r.backing)
        expect = r.test.expect.get(r.backing or "", "")
        click.echo(f"  {r.name:<48} {' '.join(r.test.args) or '-':<22} {r.test.timeout:>5.0f} s  {k.status:<5}"
                   + (f"  memory: {expect}" if expect else "")
                   + (f"  ({k.cause.describe()})" if k.cause else ""))
