"""The `kvmlab` group, its error handling and the options its commands share.

Exit status: 0 done; 1 the lab failed (or the command run in L1 failed, for `exec`: its
own status); 2 bad input (a config key, a value, a path); 130 interrupted.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
from pathlib import Path

import click

from lab.cli import terminate
from lab.config import SUITES, LabConfig, load_config
from lab.core.errors import KvmlabError, UserError
from lab.core.progress import Progress
from lab.machine.prestart import Prestart


def fail(exc: KvmlabError) -> None:
    click.echo(f"kvmlab: error: {exc.message}", err=True)
    if exc.detail:
        click.echo(exc.detail, err=True)
    command = getattr(exc, "command", None)
    if command:
        click.echo("L0 command: " + " ".join(command), err=True)
    sys.exit(exc.exit_status)


def symlink_loop(exc: BaseException) -> str | None:
    """The path of a symlink loop behind `exc`, wherever a path the user gave was followed
    (Python 3.11's Path.resolve says RuntimeError; the system calls say ELOOP); else None."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return str(exc.filename)
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from "):
        return str(exc)[len("Symlink loop from "):].strip("'\"")
    return None


#: The module (lab/cli/NAME.py) that registers each command. A command's module is imported
#: only when that command runs (or when --help lists them all): `kvmlab up` does not pay
#: for the image builder's imports, nor `kvmlab exec` for the scenarios'.
COMMANDS = {
    "up": "lab_cmds", "down": "lab_cmds", "status": "lab_cmds", "exec": "lab_cmds", "console": "lab_cmds",
    "qmp": "lab_cmds", "cp": "lab_cmds",
    "test": "run_cmds", "report": "run_cmds", "matrix": "run_cmds", "trace": "run_cmds",
    "images": "image_cmds", "kernel": "kernel_cmds", "bisect": "kernel_cmds", "selftests": "selftests_cmds",
}


class Kvmlab(click.Group):
    def get_command(self, ctx, cmd_name):
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            importlib.import_module(f"lab.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        for module in sorted(set(COMMANDS.values())):
            importlib.import_module(f"lab.cli.{module}")
        return super().list_commands(ctx)

    def invoke(self, ctx):
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, terminate)
        try:
            return super().invoke(ctx)
        except KvmlabError as exc:
            fail(exc)
        except (RuntimeError, OSError) as exc:
            loop = symlink_loop(exc)
            if loop is None:
                raise
            fail(UserError(f"{loop}: a symlink loop (too many levels of symbolic links); give the real path"))
        except KeyboardInterrupt:
            interrupted()

    def make_context(self, *args, **kwargs):
        # Ctrl-C while the arguments are read: as in a command (click would say "Aborted!"
        # and exit 1), now that `up` may have a QEMU started by then (lab/machine/prestart.py)
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            interrupted()


def interrupted() -> None:
    click.echo("kvmlab: interrupted", err=True)
    sys.exit(130)


#: Set by a command that leaves nothing to tidy once it has printed its result (`up`):
#: `run` then ends the process without Python's finalization, which took 13-25 ms
#: after `up` (five runs), on host cores that the lab's QEMU keeps busy.
EXIT_AT_ONCE: list[bool] = []


#: `kvmlab up`'s head start (lab/machine/prestart.py), for the `up` command to take.
PRESTART: list[Prestart] = []


def run(prestart: Prestart | None = None) -> None:
    """The `kvmlab` command, once lab.cli.run has given `up` its head start."""
    if prestart is not None:
        PRESTART.append(prestart)
    try:
        main()
    except SystemExit as done:
        if EXIT_AT_ONCE and done.code in (0, None):
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except OSError:
                raise done from None
            os._exit(0)
        raise


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


def kernel_options(f):
    """--kernel and --modules (kernels are always --kernel; -k is a keyword, as in pytest)."""
    f = click.option("--modules", type=click.Path(file_okay=False),
                     help="With an Image: its modules (lib/modules/RELEASE or INSTALL_MOD_PATH).")(f)
    return click.option("--kernel", metavar="KERNEL", help=KERNEL_HELP)(f)


def output_options(f):
    """--json/--junit/--html/--markdown: renderings of the run's results directory."""
    f = click.option("--markdown", "markdown_file", type=click.Path(dir_okay=False),
                     help="Append a Markdown summary table to FILE (e.g. $GITHUB_STEP_SUMMARY).")(f)
    f = click.option("--html", "html_dir", type=click.Path(file_okay=False),
                     help="Write the HTML report (fault maps, evidence, links) into DIR.")(f)
    f = click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="Write JUnit XML to FILE.")(f)
    return click.option("--json", "json_file", type=click.Path(dir_okay=False),
                        help="Write the whole run (summary, every scenario's regions) as JSON to FILE.")(f)


def check_outputs(*targets) -> None:
    if any(targets):
        from lab.results import outputs

        outputs.check(*targets)


def write_outputs(results_dir, json_file, junit_file, html_dir, markdown_file, progress: Progress,
                  results=None) -> None:
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


def lab_config(config: str | None, **overrides) -> LabConfig:
    return load_config(config, {f"lab.{k}": v for k, v in overrides.items()})


def default_name(name: str | None) -> str:
    return name or load_config().name



def bring_up(lab, cfg: LabConfig, kernel: str | None, keep_up: bool) -> None:
    """For a command that runs on a lab (`test`, `selftests`): the running one, unless
    --kernel names another kernel than it runs, else one brought up now (and left up
    with --keep-up; otherwise the Lab context takes it down)."""
    if lab.is_up() and kernel:
        running = (lab.state() or {}).get("config", {}).get("lab", {}).get("kernel")
        if running != cfg.kernel:
            raise UserError(f"--kernel {kernel}: lab {cfg.name!r} is already up with {running}; "
                            f"`kvmlab down --name {cfg.name}` first, or pick another --name")
    if not lab.is_up():
        lab.up(cfg)
        if keep_up:
            lab.keep_running()
