"""kvmlab test, report, matrix, trace: scenarios run, judged and rendered."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lab.cli.base import (
    bring_up,
    check_outputs,
    default_name,
    kernel_options,
    lab_config,
    main,
    name_option,
    output_options,
    write_outputs,
)
from lab.config import KVM_MODES, load_config
from lab.core.errors import LabError, UserError
from lab.core.progress import Progress
from lab.machine.lab import Lab

#: The kernel a nested-only `kvmlab test` brings its lab up with: guest hypervisors need
#: Linux 6.16 or later, which of Debian's suites only sid has.
NESTED_KERNEL = "sid"


@main.command("test")
@click.argument("targets", nargs=-1)
@click.option("-k", "keyword", metavar="KEYWORD",
              help="Only scenarios whose name contains KEYWORD (or matches it as a glob).")
@click.option("--list", "list_only", is_flag=True, help="List the suites and scenarios, run nothing.")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Run each scenario N times, judged as one: FLAKY (a failure) if it passed in some runs only.")
@click.option("--shard", metavar="K/N", help="Run share K of N (balanced by configs/suites/durations.json, the same "
              "on every machine); `kvmlab report DIR...` merges the shards' results.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config, if the lab must be started.")
@name_option
@kernel_options
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
@click.option("--keep-up", is_flag=True, help="Leave a lab this command started running.")
@click.option("-v", "--verbose", is_flag=True, help="Print every scenario's evidence, not only failures'.")
@click.option("-j", "--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Labs to spread the scenarios over (NAME-j1... are brought up and down for the run), "
                   "as far as host CPUs and memory allow.")
@output_options
@click.pass_obj
def test(progress: Progress, targets, keyword, list_only, count, shard, config, name, kernel, modules, results,
         keep_up, verbose, jobs, json_file, junit_file, html_dir, markdown_file) -> None:
    """Run scenario suites (default: thp) and judge stage-2 mappings.

    \b
    TARGETS: suite names (configs/suites/SUITE/), scenario files or directories.
    Uses the running lab, or brings one up and down around the run.
    Exit status: 0 all passed (or skipped), 1 a scenario failed, 2 bad input.
    """
    from lab.orchestrate import pool
    from lab.results import console as report
    from lab.scenarios import suite, suites

    scenarios = suites.resolve(list(targets), keyword)
    check_outputs(json_file, junit_file, html_dir, markdown_file)
    scenarios, shard_record = sharded(scenarios, shard)
    if list_only:
        report.print_list(scenarios, suites.suites())
        return
    if not scenarios:
        click.echo(f"--shard {shard}: this share is empty (more shards than the {len(shard_record['of'])} "
                   "scenarios); nothing to run")
        return
    cfg = lab_config(config, name=name, kernel=kernel, modules=modules)
    if all(s.l2_hypervisor is not None for s in scenarios) and cfg.kvm_mode == "vhe":
        # Only nested scenarios (`kvmlab test nested`): a lab this command brings up runs
        # KVM's nested mode, on sid's kernel unless a kernel was named (the default one
        # cannot run guest hypervisors). A running lab is used as it is.
        default = cfg.kernel == load_config().kernel
        cfg = lab_config(config, name=name, kernel=kernel or (NESTED_KERNEL if default else None), modules=modules,
                         kvm_mode="nested")
    with Lab(cfg.name, progress) as lab:  # a lab this command brings up goes down with it
        bring_up(lab, cfg, kernel, keep_up)
        helpers, started = pool.helper_labs(cfg, min(jobs, len(scenarios)), progress)
        out = suite.results_dir(results, suite.label_of(targets))
        report.print_start(lab.name, (lab.state() or {}).get("ready", {}).get("release", "?"), len(scenarios), out)
        try:
            summary = suite.run_suite(lab, scenarios, targets, out, progress, report.result_printer(len(scenarios)),
                                      pool.spread_over(helpers), count, shard_record)
        finally:
            for helper_lab in started:
                try:
                    helper_lab.down(timeout=2)
                except LabError:
                    pass
        report.print_table(summary, verbose)
    write_outputs(summary["results_dir"], json_file, junit_file, html_dir, markdown_file, progress)
    sys.exit(0 if summary["passed"] else 1)


def sharded(scenarios, spec):
    """(the scenarios of shard K/N, and the record the summary keeps of it), or (all, None)."""
    if not spec:
        return scenarios, None
    from lab.scenarios import shard

    k, n = shard.parse(spec)
    names = [s.name for s in scenarios]
    seconds = shard.durations()
    mine = set(shard.share(names, k, n, seconds))
    return [s for s in scenarios if s.name in mine], {
        "k": k, "n": n, "of": names, "seconds": {name: seconds[name] for name in names if name in seconds}}


@main.command("report")
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path())
@output_options
@click.option("-v", "--verbose", is_flag=True, help="Print every scenario's evidence, not only failures'.")
@click.pass_obj
def report_command(progress: Progress, results_dirs, json_file, junit_file, html_dir, markdown_file,
                   verbose) -> None:
    """Render a saved run again: the table, and any of JSON, JUnit, HTML, Markdown.

    \b
    RESULTS_DIRS: directories `kvmlab test` or `kvmlab matrix` wrote (nothing is re-run);
    several are merged into one report and one verdict: the shards of a run (--shard K/N),
    and runs of several kernels as a matrix. A shard not given is reported as not run.
    kvmlab report kvmlab-results/20261124-172455-thp --html report/ --junit junit.xml
    kvmlab report shard-1/* shard-2/* shard-3/* shard-4/* --html report/
    Exit status: 0 the saved run passed, 1 it did not, 2 not a results directory.
    """
    from lab.orchestrate import merge
    from lab.results import console as report
    from lab.results import load

    check_outputs(json_file, junit_file, html_dir, markdown_file)
    results = load.load(results_dirs[0]) if len(results_dirs) == 1 else merge.merge(list(results_dirs))
    if isinstance(results, load.Matrix):
        report.print_matrix(results.matrix)
    else:
        report.print_table({**results.summary, "scenarios": results.scenarios,
                            "counts": results.counts,
                            "results_dir": results.summary.get("results_dir") if len(results_dirs) > 1
                            else str(results.path)}, verbose)
    write_outputs(results_dirs[0], json_file, junit_file, html_dir, markdown_file, progress, results)
    sys.exit(0 if results.passed else 1)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--kernels", "kernel_list", metavar="K1,K2,...", help="Kernels, comma-separated (as for --kernel).")
@click.option("--kernel", "kernel_opts", multiple=True, metavar="KERNEL", help="A kernel (repeatable).")
@click.option("-k", "keyword", metavar="KEYWORD", help="Only scenarios whose name contains KEYWORD (or matches it).")
@click.option("--kvm-modes", "kvm_mode_list", metavar="M1,M2,...",
              help="Also a column per KVM mode (vhe, nvhe, protected, nested) for each kernel; "
                   "a mode a kernel cannot give is a skipped column, with the reason. Only nested "
                   "scenarios (the nested suite): nested by default.")
@click.option("--shard", metavar="K/N", help="Run share K of N of the scenarios on every kernel (as for test).")
@click.option("--selftests", "selftests", is_flag=True, help="Run the KVM selftests (kvmlab selftests' default "
              "selection, TARGETS naming tests) on every kernel instead of a suite, each against its known results.")
@click.option("--trace", is_flag=True, help="With --selftests: record and judge stage-2 faults, as selftests --trace.")
@click.option("-j", "--jobs", type=click.IntRange(1, 16),
              help="Labs at a time (default: 2, or one per 2 host CPUs beyond 4, as CPUs and memory allow).")
@click.option("--snapshot/--no-snapshot", default=None,
              help="Restore each kernel's lab from its snapshot (the first matrix saves it). Default: on for "
                   "Debian kernels in the default KVM mode, else as the config's lab.snapshot.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config for every kernel's lab.")
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
@output_options
@click.pass_obj
def matrix(progress: Progress, targets, kernel_list, kernel_opts, keyword, kvm_mode_list, shard, selftests, trace,
           jobs, snapshot, config, results, json_file, junit_file, html_dir, markdown_file) -> None:
    """Run a suite (default: thp) on several kernels; show the mappings side by side.

    \b
    kvmlab matrix --kernels bullseye,bookworm,trixie,sid thp
    kvmlab matrix --kernels bookworm,trixie,sid --selftests --trace
    Rows where kernels map differently are marked; RESULTS/matrix.json has it all.
    Exit status: 0 every kernel's suite passed, 1 otherwise, 2 bad input.
    """
    import os

    from lab.orchestrate import matrix as mx
    from lab.results import console as report
    from lab.scenarios import suites
    from lab.scenarios.suite import results_dir

    kernels = [k.strip() for k in (kernel_list or "").split(",") if k.strip()] + list(kernel_opts)
    if not kernels:
        raise UserError("matrix: give the kernels, e.g. --kernels bullseye,bookworm,trixie,sid")
    check_outputs(json_file, junit_file, html_dir, markdown_file)
    work = None
    if selftests:
        if shard:
            raise UserError("--shard is for scenarios; --selftests runs the selection on every kernel")
        work, scenarios, shard_record = _selftests_work(list(targets), keyword, trace, config), [], None
    else:
        scenarios, shard_record = sharded(suites.resolve(list(targets), keyword), shard)
        if not scenarios:
            click.echo(f"--shard {shard}: this share is empty; nothing to run")
            return
    lab_config(config)  # the config file itself is checked once, before any kernel
    modes = [m.strip() for m in (kvm_mode_list or "").split(",") if m.strip()]
    for mode in modes:
        if mode not in KVM_MODES:
            raise UserError(f"--kvm-modes: {mode!r} is not a KVM mode; give some of {', '.join(KVM_MODES)}")
    if len(set(modes)) != len(modes):
        raise UserError(f"--kvm-modes {kvm_mode_list}: a mode is given twice")
    if not modes and scenarios and all(s.l2_hypervisor is not None for s in scenarios):
        # Only nested scenarios (`kvmlab matrix ... nested`): each kernel's lab runs KVM's
        # nested mode, as `kvmlab test nested` does; a kernel that cannot is a skipped column.
        modes = ["nested"]
    columns = mx.plan(kernels, lambda kernel, lab_name: lab_config(config, kernel=kernel, name=lab_name), modes)
    mx.choose_snapshots(columns, snapshot)
    if not jobs:
        from lab.orchestrate import pool

        jobs, _ = pool.lab_capacity(columns[0].config.machine_mib, mx.default_jobs(len(columns), os.cpu_count() or 1))
    label = "matrix-" + ("selftests" if selftests else "-".join(Path(t).stem for t in targets or ["thp"]))
    out = results_dir(results, label[:40])
    what = "the KVM selftests" if selftests else f"{len(scenarios)} scenarios"
    click.echo(f"Running {what} on {len(columns)} kernels ({', '.join(c.label for c in columns)}), "
               f"{jobs} lab{'s' if jobs > 1 else ''} at a time{', the first up served first' if jobs > 1 else ''}; "
               f"results in {out}")
    result = mx.run(columns, scenarios, ["selftests"] if selftests else list(targets), out, jobs, progress, click.echo,
                    shard_record, work)
    report.print_matrix(result)
    write_outputs(out, json_file, junit_file, html_dir, markdown_file, progress)
    sys.exit(0 if result["passed"] else 1)


def _selftests_work(tests: list[str], keyword: str | None, trace: bool, config: str | None):
    """What `matrix --selftests` runs on each kernel's lab: the selection, as `kvmlab selftests`."""
    from lab.selftests import run as st
    from lab.selftests.selection import load_selection

    runs = st.plan(load_selection(), tests, keyword, None, False)
    if not runs:
        raise UserError(f"no selftest matches {' '.join(tests) or keyword!r}; `kvmlab selftests --list` shows them")
    return lambda lab, out, on_result: st.run_on_lab(lab, runs, out, trace, config_file=config, on_result=on_result)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.option("--event", "-e", "events", multiple=True, help="SYSTEM:EVENT to record (repeatable; "
              "default kvm:kvm_guest_fault).")
@click.option("--analyze", "-a", is_flag=True, help="Decode the faults: kinds, levels, block/page per 2 MiB region.")
@click.option("--buffer-kb", type=click.IntRange(64, 4 * 1024 * 1024), default=65536, show_default=True,
              help="Ring buffer per L1 CPU; a full buffer is reported as lost events.")
@click.option("--timeout", "-t", type=float, default=300, show_default=True, help="Seconds before CMD is killed.")
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep the trace (default ./kvmlab-results).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def trace(name, events, analyze, buffer_kb, timeout, results, command) -> None:
    """Record tracepoints in L1 around COMMAND (run in L1), with the suite's loss checks.

    \b
    kvmlab cp ./repro :/root/repro && kvmlab trace --analyze -- /root/repro
    Keeps the raw per-CPU buffers, formats, events.txt and the L1 log, and the regular
    files COMMAND writes into $KVMLAB_RUN_DIR (links, devices and the like are listed in
    refused-from-l1.txt, not taken).
    Exit status: 1 if events were lost or L1 logged a crash, else the command's.
    """
    from lab.scenarios import adhoc
    from lab.scenarios.suite import results_dir

    lab = Lab(default_name(name))
    lab.require_up()
    out = results_dir(results, "trace")
    done = adhoc.run(lab, list(command), list(events) or ["kvm:kvm_guest_fault"], buffer_kb, timeout, out)
    vmm = done.result.get("vmm", {})
    if done.output:
        click.echo(done.output.rstrip())
    counts: dict[str, int] = {}
    for e in done.trace.events:
        counts[e.name] = counts.get(e.name, 0) + 1
    click.echo(f"kvmlab: {len(done.trace.events)} events recorded "
               f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'none'}) "
               f"in {vmm.get('seconds', 0):.1f} s; "
               f"kept in {done.artefacts}")
    if analyze:
        for line in adhoc.analysis_lines(done.trace, done.result.get("l1_page_size")):
            click.echo(line)
    status = vmm.get("exit_code", 128 + vmm.get("signal", 0))
    if vmm.get("timeout"):
        click.echo(f"kvmlab: the command {vmm['timeout']}", err=True)
        status = 124
    if not done.trace.complete:
        click.echo("kvmlab: trace incomplete: " + "; ".join(done.trace.problems)
                   + " (raise --buffer-kb)", err=True)
        status = 1
    for c in done.crashes:
        click.echo(f"kvmlab: L1 log: {c.title}\n{c.excerpt}", err=True)
        status = 1
    for line in done.refused:
        click.echo(f"kvmlab: warning: L1 left in the share, not taken: {line}", err=True)
    sys.exit(status)


