"""The `kvmlab` command: a thin layer over lab.machine.Lab and lab.builder.

Exit status: 0 done; 1 the lab failed (or the command run in L1 failed, for `exec`: its
own status); 2 bad input (a config key, a value, a path); 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from lab.config import SUITES, THP_MODES, load_config
from lab.core.errors import KvmlabError, LabError, UserError
from lab.builder.build import Builder
from lab.builder.store import Store, tree_size
from lab.machine.agent import attach_console
from lab.machine.lab import Lab, list_labs
from lab.machine.qemu import l0_lacks
from lab.core.progress import Progress


def _fail(exc: KvmlabError) -> None:
    click.echo(f"kvmlab: error: {exc.message}", err=True)
    if exc.detail:
        click.echo(exc.detail, err=True)
    command = getattr(exc, "command", None)
    if command:
        click.echo("L0 command: " + " ".join(command), err=True)
    sys.exit(exc.exit_status)


def _terminate(signum, frame):
    # SIGTERM and SIGHUP (a closed terminal) unwind like Ctrl-C, so QEMUs being started
    # are stopped and reaped and half-built images removed.
    raise KeyboardInterrupt


class Kvmlab(click.Group):
    def invoke(self, ctx):
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGHUP, _terminate)
        try:
            return super().invoke(ctx)
        except KvmlabError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("kvmlab: interrupted", err=True)
            sys.exit(130)


@click.group(cls=Kvmlab, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """kvmlab: arm64 KVM stage-2 experiments on any x86 machine.

    L0 is qemu-system-aarch64 under TCG with EL2; L1 is Debian's arm64 Linux running KVM.
    """
    ctx.obj = Progress(quiet=quiet)


def name_option(f):
    return click.option("--name", "-n", default=None, help="Lab name (config key lab.name; default 'default').")(f)


KERNEL_HELP = ("What L1 boots: a Debian suite (" + ", ".join(SUITES) + "), SUITE:VERSION (bookworm:6.1.176-1), "
               "a Debian ABI (6.1.0-50), or an arm64 Image / kernel build directory.")


def kernel_options(*short: str):
    def decorate(f):
        f = click.option("--modules", type=click.Path(file_okay=False),
                         help="With an Image: its modules (lib/modules/RELEASE or INSTALL_MOD_PATH).")(f)
        return click.option("--kernel", *short, metavar="KERNEL", help=KERNEL_HELP)(f)
    return decorate


def output_options(f):
    """--json/--junit/--html/--markdown: renderings of the run's results directory."""
    f = click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False),
                     help="Append a Markdown summary table to FILE (e.g. $GITHUB_STEP_SUMMARY).")(f)
    f = click.option("--html", "html_dir", type=click.Path(file_okay=False),
                     help="Write the HTML report (fault maps, evidence, links) into DIR.")(f)
    f = click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="Write JUnit XML to FILE.")(f)
    return click.option("--json", "json_file", type=click.Path(dir_okay=False),
                        help="Write the whole run (summary, every scenario's regions) as JSON to FILE.")(f)


def _check_outputs(*targets) -> None:
    if any(targets):
        from lab.results import outputs

        outputs.check(*targets)


def _outputs(results_dir, json_file, junit_file, html_dir, markdown_file, progress: Progress, results=None) -> None:
    if not (json_file or junit_file or html_dir or markdown_file):
        return
    from lab.results import load, outputs

    results = results or load.load(results_dir)
    with progress.step("Writing the reports") as step:
        outputs.write(results, json_file, junit_file, html_dir, markdown_file, echo=step.update)
    for what, value in (("JSON", json_file), ("JUnit", junit_file), ("Markdown", markdown_file)):
        if value:
            click.echo(f"{what}: {value}")
    if html_dir:
        click.echo(f"HTML report: {Path(html_dir) / 'index.html'}")


def _config(config: str | None, **overrides):
    return load_config(config, {f"lab.{k}": v for k, v in overrides.items()})


def _lab_name(name: str | None) -> str:
    return name or load_config().name


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="A lab config (YAML); see configs/lab.yaml.")
@name_option
@kernel_options("-k")
@click.option("--cpus", type=int, help="L1 vCPUs.")
@click.option("--memory", "-m", help="L1 memory, e.g. 2G.")
@click.option("--thp", type=click.Choice(THP_MODES), help="L1 transparent_hugepage at boot.")
@click.option("--gdb", type=int, metavar="PORT", help="A gdb stub for L1's kernel on 127.0.0.1:PORT.")
@click.option("--snapshot/--no-snapshot", default=None,
              help="Restore a saved ready L1 (saved by the first such up) instead of booting (lab.snapshot).")
@click.pass_obj
def up(progress: Progress, config, name, kernel, modules, cpus, memory, thp, gdb, snapshot) -> None:
    """Start a lab: build images if needed, boot L1 (or restore its snapshot), wait until KVM is ready."""
    cfg = _config(config, name=name, kernel=kernel, modules=modules, cpus=cpus, memory=memory, thp=thp, gdb=gdb,
                  snapshot=snapshot)
    lab = Lab(cfg.name, progress)
    info = lab.up(cfg)
    state = lab.state() or {}
    how = {"restored": "restored from its snapshot", "saved": "booted, snapshot saved"}.get(
        (state.get("snapshot") or {}).get("how", ""), "L1 ready")
    click.echo(f"Lab '{cfg.name}' is up: {how} in {info.seconds:.1f} s (guest uptime {info.guest_uptime:.1f} s)")
    rows = [
        ("kernel", f"{info.release} ({state.get('kernel', {}).get('label', cfg.kernel)})"),
        ("KVM", f"{info.kvm_mode} mode, /dev/kvm {'present' if info.kvm_device else 'MISSING'}"),
        ("THP", info.thp),
        ("L1", f"{cfg.cpus} vCPUs, {cfg.memory_mib} MiB"),
        ("L0", state.get("qemu_version", "?")),
    ]
    lacks = l0_lacks(state.get("qemu_version", ""))
    if lacks:
        rows.append(("note", f"{lacks} (scripts/setup installs QEMU 10 on Debian 12; or set qemu.binary)"))
    rows += [
        ("console", f"kvmlab console --name {cfg.name}  (log: {lab.paths.console_log})"),
    ]
    if cfg.gdb:
        rows.append(("gdb", f"target remote 127.0.0.1:{cfg.gdb}  (L1's kernel; vmlinux from its debug package)"))
    for key, value in rows:
        click.echo(f"  {key:<8} {value}")


@main.command()
@name_option
@click.option("--all", "all_labs", is_flag=True, help="Stop every lab.")
def down(name, all_labs) -> None:
    """Stop a lab: QMP powerdown, then quit, then kill; remove its sockets and state."""
    names = list_labs() if all_labs else [_lab_name(name)]
    for lab_name in names:
        how = Lab(lab_name).down()
        click.echo(f"Lab '{lab_name}' is down ({how}).")


@main.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name, as_json) -> None:
    """Show a lab (or, with no --name, every lab)."""
    names = [name] if name else (list_labs() or [_lab_name(None)])
    results = [Lab(n).status() for n in names]
    if as_json:
        click.echo(json.dumps(results[0] if name else results, indent=2))
        return
    for st in results:
        if not st["up"]:
            click.echo(f"{st['name']}: down" + (f" ({st['note']})" if st.get("note") else ""))
            continue
        click.echo(f"{st['name']}: {st['status']}, pid {st['pid']}, up {st['uptime']:.0f} s, "
                   f"{st['release']} ({st['kernel']}), KVM {st['kvm_mode']}, THP {st['thp']}, "
                   f"{st['cpus']} vCPUs, {st['memory']}")
        click.echo(f"  dir {st['paths']['dir']}")
    if name and not results[0]["up"]:
        sys.exit(1)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@name_option
@click.option("--timeout", "-t", type=float, help="Seconds before the command is interrupted (exit 124).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(name, timeout, command) -> None:  # noqa: A001 - the command is called exec
    """Run COMMAND in L1, stream its output, exit with its status.

    Arguments are passed as they are (no shell); for a pipeline use `sh -c '...'`.
    """
    status_code = Lab(_lab_name(name)).exec(list(command), sys.stdout.buffer, timeout=timeout)
    if status_code == 124 and timeout is not None:
        click.echo(f"kvmlab: the command ran past --timeout {timeout:g} s and was interrupted", err=True)
    sys.exit(status_code)


@main.command()
@name_option
def console(name) -> None:
    """Attach to L1's serial console (ttyAMA0). Leave with Ctrl-].

    Kernel messages appear here too; the full log is console.log in the lab directory.
    """
    lab = Lab(_lab_name(name))
    lab._require_up()
    if not sys.stdin.isatty():
        raise UserError("kvmlab console needs a terminal; use `kvmlab exec` from scripts")
    click.echo(f"Connected to L1's console of lab '{lab.name}'. Ctrl-] leaves.", err=True)
    attach_console(lab.paths.console)
    click.echo("", err=True)


@main.command()
@name_option
@click.argument("command")
@click.argument("arguments", required=False)
def qmp(name, command, arguments) -> None:
    """Send one QMP COMMAND (with optional JSON ARGUMENTS) to L0; print the JSON reply."""
    args = None
    if arguments:
        try:
            args = json.loads(arguments)
        except ValueError as exc:
            raise UserError(f"ARGUMENTS: not valid JSON ({exc}); e.g. '{{\"id\": \"x\"}}'") from None
        if not isinstance(args, dict):
            raise UserError("ARGUMENTS: must be a JSON object, e.g. '{\"id\": \"x\"}'")
    with Lab(_lab_name(name)).qmp() as monitor:
        reply = monitor.cmd_raw(command, args)
    click.echo(json.dumps(reply, indent=2))
    if "error" in reply:
        sys.exit(1)


@main.command()
@name_option
@click.argument("src")
@click.argument("dst")
def cp(name, src, dst) -> None:
    """Copy a file between the host and L1; the L1 side is written :PATH.

    \b
    kvmlab cp ./probe :/root/probe      host -> L1
    kvmlab cp :/tmp/trace.dat ./        L1 -> host
    """
    lab = Lab(_lab_name(name))
    if src.startswith(":") and not dst.startswith(":"):
        written = lab.pull(src[1:], Path(dst))
        click.echo(f"L1:{src[1:]} -> {written}")
    elif dst.startswith(":") and not src.startswith(":"):
        lab.push(Path(src), dst[1:])
        click.echo(f"{src} -> L1:{dst[1:]}")
    else:
        raise UserError("cp: exactly one of SRC and DST must be an L1 path written :PATH, e.g. :/root/file")


@main.command("test")
@click.argument("targets", nargs=-1)
@click.option("-k", "keyword", metavar="KEYWORD", help="Only scenarios whose name contains KEYWORD (or matches it as a glob).")
@click.option("--list", "list_only", is_flag=True, help="List the suites and scenarios, run nothing.")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config, if the lab must be started.")
@name_option
@kernel_options()
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
@click.option("--keep-up", is_flag=True, help="Leave a lab this command started running.")
@click.option("-v", "--verbose", is_flag=True, help="Print every scenario's evidence, not only failures'.")
@click.option("-j", "--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Labs to spread the scenarios over (NAME-j1... are brought up and down for the run), "
                   "as far as host CPUs and memory allow.")
@output_options
@click.pass_obj
def test(progress: Progress, targets, keyword, list_only, config, name, kernel, modules, results, keep_up,
         verbose, jobs, json_file, junit_file, html_dir, markdown_file) -> None:
    """Run scenario suites (default: thp) and judge stage-2 mappings.

    \b
    TARGETS: suite names (configs/suites/SUITE/), scenario files or directories.
    Uses the running lab, or brings one up and down around the run.
    Exit status: 0 all passed (or skipped), 1 a scenario failed, 2 bad input.
    """
    from lab.results import console as report
    from lab.scenarios import model, suites

    scenarios = suites.resolve(list(targets), keyword)
    _check_outputs(json_file, junit_file, html_dir, markdown_file)
    if list_only:
        report.print_list(scenarios, suites.suites())
        return
    cfg = _config(config, name=name, kernel=kernel, modules=modules)
    lab = Lab(cfg.name, progress)
    started_here = False
    if lab.is_up() and kernel:
        running = (lab.state() or {}).get("config", {}).get("lab", {}).get("kernel")
        if running != cfg.kernel:
            raise UserError(f"--kernel {kernel}: lab {cfg.name!r} is already up with {running}; "
                            f"`kvmlab down --name {cfg.name}` first, or pick another --name")
    if not lab.is_up():
        lab.up(cfg)
        started_here = True
    helpers, started = _helper_labs(cfg, min(jobs, len(scenarios)), progress)
    try:
        summary = report.run_suite(lab, scenarios, targets, results, progress, verbose, helpers)
    finally:
        for helper_lab in started:
            try:
                helper_lab.down(timeout=2)
            except LabError:
                pass
        if started_here and not keep_up:
            lab.down()
    _outputs(summary["results_dir"], json_file, junit_file, html_dir, markdown_file, progress)
    sys.exit(0 if summary["passed"] else 1)


def lab_capacity(memory_mib: int, wanted: int) -> tuple[int, str]:
    """How many labs of `memory_mib` this host runs at once (up to `wanted`), and why not more."""
    import os

    from lab.config import meminfo_mib

    cpus = os.cpu_count() or 1
    available = meminfo_mib("MemAvailable") or memory_mib * wanted
    by_memory = max(1, available // (memory_mib + 512))  # QEMU's own share: TCG code cache, devices
    labs = min(wanted, cpus, by_memory)
    why = "" if labs == wanted else (f"{cpus} host CPUs" if labs == cpus else
                                     f"{available} MiB available, {memory_mib} MiB per lab")
    return labs, why


def _helper_labs(cfg, jobs: int, progress: Progress):
    """Functions that each bring up one more lab for `test -j` (run in the runner's threads),
    and the list they add the labs they started to (for the caller to stop)."""
    import dataclasses

    if jobs <= 1:
        return [], []
    labs, why = lab_capacity(cfg.memory_mib, jobs)
    if labs < jobs:
        progress.note(f"-j {jobs}: {labs} lab{'s' if labs > 1 else ''} at a time ({why})")
    started: list[Lab] = []

    def bring_up(helper_name: str):
        def up() -> Lab | None:
            helper = Lab(helper_name)
            if helper.is_up() or helper.running():
                progress.note(f"lab {helper_name!r} is in use; the run goes on without it")
                return None
            try:
                helper.up(dataclasses.replace(cfg, name=helper_name, gdb=0))
            except (LabError, UserError) as exc:
                progress.note(f"lab {helper_name!r} did not come up ({exc}); the run goes on without it")
                return None
            started.append(helper)
            return helper
        return up

    names = [f"{cfg.name[:28]}-j{i}" for i in range(1, labs)]
    return [bring_up(n) for n in names], started


@main.command("report")
@click.argument("results_dir", type=click.Path())
@output_options
@click.option("-v", "--verbose", is_flag=True, help="Print every scenario's evidence, not only failures'.")
@click.pass_obj
def report_command(progress: Progress, results_dir, json_file, junit_file, html_dir, markdown_file, verbose) -> None:
    """Render a saved run again: the table, and any of JSON, JUnit, HTML, Markdown.

    \b
    RESULTS_DIR: a directory `kvmlab test` or `kvmlab matrix` wrote (nothing is re-run).
    kvmlab report kvmlab-results/20261124-172455-thp --html report/ --junit junit.xml
    Exit status: 0 the saved run passed, 1 it did not, 2 not a results directory.
    """
    from lab.results import console as report
    from lab.results import load
    from lab.orchestrate import matrix as mx

    _check_outputs(json_file, junit_file, html_dir, markdown_file)
    results = load.load(results_dir)
    if isinstance(results, load.Matrix):
        mx.print_table(results.matrix)
    else:
        report.print_table({**results.summary, "scenarios": results.scenarios,
                            "counts": results.counts, "results_dir": str(results.path)}, verbose)
    _outputs(results_dir, json_file, junit_file, html_dir, markdown_file, progress, results)
    sys.exit(0 if results.passed else 1)


@main.command()
@click.argument("targets", nargs=-1)
@click.option("--kernels", "kernel_list", metavar="K1,K2,...", help="Kernels, comma-separated (as for --kernel).")
@click.option("--kernel", "-K", "kernel_opts", multiple=True, metavar="KERNEL", help="A kernel (repeatable).")
@click.option("-k", "keyword", metavar="KEYWORD", help="Only scenarios whose name contains KEYWORD (or matches it).")
@click.option("-j", "--jobs", type=click.IntRange(1, 16), help="Labs at a time (default: one per 2 host CPUs).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config for every kernel's lab.")
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
@output_options
@click.pass_obj
def matrix(progress: Progress, targets, kernel_list, kernel_opts, keyword, jobs, config, results, json_file,
           junit_file, html_dir, markdown_file) -> None:
    """Run a suite (default: thp) on several kernels; show the mappings side by side.

    \b
    kvmlab matrix --kernels bullseye,bookworm,trixie,sid thp
    Rows where kernels map differently are marked; RESULTS/matrix.json has it all.
    Exit status: 0 every kernel's suite passed, 1 otherwise, 2 bad input.
    """
    import os

    from lab.results.console import results_dir
    from lab.orchestrate import matrix as mx
    from lab.scenarios import model, suites

    kernels = [k.strip() for k in (kernel_list or "").split(",") if k.strip()] + list(kernel_opts)
    if not kernels:
        raise UserError("matrix: give the kernels, e.g. --kernels bullseye,bookworm,trixie,sid")
    scenarios = suites.resolve(list(targets), keyword)
    _check_outputs(json_file, junit_file, html_dir, markdown_file)
    _config(config)  # the config file itself is checked once, before any kernel
    columns = mx.plan(kernels, lambda kernel, lab_name: _config(config, kernel=kernel, name=lab_name))
    jobs = jobs or max(1, min(len(columns), (os.cpu_count() or 2) // 2))
    label = "matrix-" + "-".join(Path(t).stem for t in targets or ["thp"])
    out = results_dir(results, label[:40])
    click.echo(f"Running {len(scenarios)} scenarios on {len(columns)} kernels ({', '.join(c.label for c in columns)}), "
               f"{jobs} lab{'s' if jobs > 1 else ''} at a time; results in {out}")
    result = mx.run(columns, scenarios, list(targets), out, jobs, progress, click.echo)
    mx.print_table(result)
    _outputs(out, json_file, junit_file, html_dir, markdown_file, progress)
    sys.exit(0 if result["passed"] else 1)


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
    Keeps the raw per-CPU buffers, formats, events.txt and the L1 log.
    Exit status: 1 if events were lost or L1 logged a crash, else the command's.
    """
    from lab.results.console import results_dir
    from lab.scenarios import adhoc

    lab = Lab(_lab_name(name))
    lab._require_up()
    out = results_dir(results, "trace")
    done = adhoc.run(lab, list(command), list(events) or ["kvm:kvm_guest_fault"], buffer_kb, timeout, out)
    vmm = done.result.get("vmm", {})
    if done.output:
        click.echo(done.output.rstrip())
    counts = {}
    for e in done.trace.events:
        counts[e.name] = counts.get(e.name, 0) + 1
    click.echo(f"kvmlab: {len(done.trace.events)} events recorded "
               f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'none'}) in {vmm.get('seconds', 0):.1f} s; "
               f"kept in {done.artefacts}")
    if analyze:
        for line in adhoc.analysis_lines(done.trace):
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
    sys.exit(status)


@main.group()
def kernel() -> None:
    """Build L1 kernels from source."""


@kernel.command("build")
@click.option("--src", required=True, type=click.Path(file_okay=False), help="A Linux source tree (left unwritten).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Build directory (make O=); default: one per tree under the cache, so rebuilds are incremental.")
@click.option("--config-fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Another config fragment, merged after configs/kernel/kvmlab.config (repeatable).")
@click.option("--base", default="defconfig", show_default=True,
              help="The config the fragments go onto: defconfig, tinyconfig (small, quick), allnoconfig or a file.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), help="make -j (default: the CPU count).")
@click.option("--print-image", is_flag=True, help="Print only the Image's path on stdout (for scripts, e.g. bisect).")
@click.pass_obj
def kernel_build(progress: Progress, src, out, fragments, base, jobs, print_image) -> None:
    """Cross-compile an arm64 Image that boots as L1 with no modules.

    \b
    kvmlab kernel build --src ~/linux --base tinyconfig
    kvmlab up --kernel ~/.cache/kvmlab/builds/linux-.../   (the path it prints)
    """
    from lab.kernels import source

    result = source.build(Path(src), Path(out) if out else None, [Path(f) for f in fragments], base, jobs, progress)
    if print_image:
        click.echo(str(result.image))
        return
    click.echo(f"Built {result.release}{' at ' + result.commit[:12] if result.commit else ''} in {result.seconds:.0f} s: "
               f"{result.image}")
    click.echo(f"  config {result.out / '.config'}, log {result.out / 'kvmlab-build.log'}")
    click.echo(f"Boot it: kvmlab up --kernel {result.out}")


@main.command()
@click.option("--src", required=True, type=click.Path(file_okay=False), help="A git work tree of the kernel.")
@click.option("--good", required=True, metavar="REV", help="A commit where the scenario is good.")
@click.option("--bad", required=True, metavar="REV", help="A later commit where it is bad.")
@click.option("--scenario", required=True, metavar="NAME", help="A scenario name (any suite) or file.")
@click.option("--judge", type=click.Choice(["verdict", "observed"]), default="verdict", show_default=True,
              help="verdict: the scenario's expectations decide; observed: the mapping seen at GOOD is good.")
@click.option("--build-cmd", metavar="CMD", help="Shell command run in the tree per step; prints the kernel to boot "
              "(last line), fails to skip. Default: kvmlab kernel build --src . --print-image.")
@click.option("--base", default="defconfig", show_default=True, help="For the default build: the base config.")
@click.option("--config-fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="For the default build: another config fragment (repeatable).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Lab config for every step's lab.")
@click.option("--name", "-n", default="bisect", show_default=True, help="Name of the lab each step brings up.")
@click.option("--results", type=click.Path(file_okay=False), help="Where to keep results (default ./kvmlab-results).")
def bisect(src, good, bad, scenario, judge, build_cmd, base, fragments, config, name, results) -> None:
    """Find the first commit where a scenario goes bad (git bisect run).

    \b
    kvmlab bisect --src ~/linux --good v5.14 --bad v5.15 --scenario memfd-second-mapping
    Each step: build, boot a lab on it, run the scenario, judge; a failed build skips.
    Exit status: 0 found (or narrowed to skipped commits), 1 not found, 2 bad input.
    """
    from lab.orchestrate import bisect as bis
    from lab.results.console import results_dir

    src_path = Path(src).expanduser().resolve()
    scenario_path = bis.find_scenario(scenario)
    from lab.scenarios import model, suites

    model.load(scenario_path)  # checked before any build
    _config(config, name=name)
    if Lab(name).is_up():
        raise UserError(f"lab {name!r} is up; bisect brings its own up and down: `kvmlab down --name {name}` or --name")
    out = results_dir(results, f"bisect-{scenario_path.stem}"[:40])
    b = bis.Bisection(src_path, good, bad, scenario_path, build_cmd or bis.default_build_cmd(base, list(fragments)),
                      judge, str(Path(config).resolve()) if config else None, name, out.resolve())
    click.echo(f"Bisecting {src_path} from {good} (good) to {bad} (bad) on {scenario_path.stem}, judged by {judge}; "
               f"results in {out}")
    report = bis.run(b, click.echo)
    for line in bis.report_lines(report):
        click.echo(line)
    sys.exit(0 if report["result"] in ("found", "ambiguous") else 1)


@main.group()
def images() -> None:
    """Build, list and remove the cached L1 images."""


@images.command("build")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
@click.option("--kernel", "-k", "kernels", multiple=True, metavar="KERNEL",
              help="A kernel to build or fetch (repeatable; as for `up --kernel`); default: the config's.")
@click.pass_obj
def images_build(progress: Progress, config, kernels) -> None:
    """Build (or find cached) the kernel and userspace images."""
    builder = Builder(progress=progress)
    cfg = _config(config)
    built = [builder.rootfs(cfg), builder.tools()]
    for suite in kernels or [cfg.kernel]:
        built.append(builder.kernel(_config(config, kernel=suite)))
    for item in built:
        manifest = item.manifest
        where = getattr(item, "image", None) or getattr(item, "root", None) or getattr(item, "path", "")
        click.echo(f"{manifest.get('kind', 'kernel')}: {manifest.get('release') or manifest.get('suite') or 'l1'} "
                   f"{manifest.get('key', '')[:16]}  {where}")


@images.command("key")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
@kernel_options("-k")
def images_key(config, kernel, modules) -> None:
    """Print the cache key of the images a config needs (for CI caches; builds nothing)."""
    click.echo(Builder().cache_key(_config(config, kernel=kernel, modules=modules)))


@images.command("list")
@click.option("--json", "as_json", is_flag=True)
def images_list(as_json) -> None:
    """List cached images: what each holds, and whether this kvmlab still uses it."""
    store = Store()
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([e.manifest for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"No images in {store.images}; `kvmlab images build` or `kvmlab up` builds them.")
        return
    from rich.console import Console
    from rich.table import Table

    current = Builder().current_keys(load_config())
    table = Table("kind", "suite", "contents", "key", "size", "built", "state", title=str(store.images))
    for entry in entries:
        m = entry.manifest
        contents = (f"{m['release']}, {len(m['modules'])} modules" if m["kind"] == "kernel"
                    else f"{len(m['packages'])} packages" if m["kind"] == "rootfs"
                    else "L1 tools, " + ", ".join(m.get("params_offset", {})))
        table.add_row(m["kind"], m.get("suite", "-"), contents, m["key"][:12], f"{tree_size(entry.path) / 2**20:.0f} MiB",
                      m["built_at"][:16].replace("T", " "), "current" if m["key"] in current else "stale")
    Console(width=max(100, Console().width)).print(table)
    if any(e.manifest["key"] not in current for e in entries):
        click.echo("`kvmlab images clean --stale` removes the stale ones.")


@images.command("clean")
@click.option("--stale", is_flag=True,
              help="Only what this kvmlab would no longer build (older code, recipe or config).")
@click.option("--snapshots", "only_snapshots", is_flag=True, help="Only the saved L1 snapshots (kvmlab up --snapshot).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="The config whose images --stale keeps.")
def images_clean(stale, only_snapshots, config) -> None:
    """Remove cached images and L1 snapshots (rebuilt on the next `up`)."""
    from lab.machine import snapshot

    running = [n for n in list_labs() if Lab(n).running()]
    if running:
        raise UserError(f"labs are running on these images ({', '.join(running)}); `kvmlab down --all` first")
    if only_snapshots:
        freed = snapshot.clean(None)
        click.echo(f"Removed the L1 snapshots ({freed / 2**20:.0f} MiB).")
        return
    keep = Builder().current_keys(_config(config)) if stale else None
    freed = Store().clean(keep)
    # A snapshot is only good with the images it was taken on.
    left = {e.manifest.get("key") for e in Store().entries()} if stale else None
    freed += snapshot.clean(left)
    click.echo(f"Removed {'stale' if stale else 'all'} cached images and snapshots ({freed / 2**20:.0f} MiB).")


if __name__ == "__main__":
    main()
