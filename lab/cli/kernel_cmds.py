"""kvmlab kernel build, bisect: kernels built from a tree, and the commit that changed a scenario."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lab.cli.base import lab_config, main
from lab.core.errors import UserError
from lab.core.progress import Progress
from lab.machine.lab import Lab
from lab.orchestrate.bisect import JUDGES


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
    at = " at " + result.commit[:12] if result.commit else ""
    click.echo(f"Built {result.release}{at} in {result.seconds:.0f} s: "
               f"{result.image}")
    click.echo(f"  config {result.out / '.config'}, log {result.out / 'kvmlab-build.log'}")
    click.echo(f"Boot it: kvmlab up --kernel {result.out}")


@kernel.command("source")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
@click.option("--kernel", metavar="KERNEL", help="A Debian kernel, as for `up --kernel` (default: the config's).")
@click.pass_obj
def kernel_source(progress: Progress, config, kernel) -> None:
    """Fetch Debian's source of a Debian kernel and print the unpacked tree's path.

    \b
    The linux-source package of the kernel's own suite, at its exact version, fetched
    once and kept in the image cache:
    kvmlab kernel build --src "$(kvmlab kernel source --kernel sid)" --base tinyconfig
    """
    from lab.builder.build import Builder

    click.echo(str(Builder(progress=progress).kernel_source(lab_config(config, kernel=kernel))))


@main.command()
@click.option("--src", required=True, type=click.Path(file_okay=False), help="A git work tree of the kernel.")
@click.option("--good", required=True, metavar="REV", help="A commit where the scenario is good.")
@click.option("--bad", required=True, metavar="REV", help="A later commit where it is bad.")
@click.option("--scenario", required=True, metavar="NAME", help="A scenario name (any suite) or file.")
@click.option("--judge", type=click.Choice(list(JUDGES)), default="verdict", show_default=True,
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
    from lab.scenarios.suite import results_dir

    src_path = Path(src).expanduser().resolve()
    scenario_path = bis.find_scenario(scenario)
    from lab.scenarios import model

    model.load(scenario_path)  # checked before any build
    lab_config(config, name=name)
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


