"""kvmlab up, down, status, exec, console, qmp, cp: one lab's life and the ways into it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lab.cli.base import EXIT_AT_ONCE, PRESTART, default_name, kernel_options, lab_config, main, name_option
from lab.config import KVM_MODES, THP_MODES
from lab.core.errors import UserError
from lab.core.progress import Progress
from lab.machine.agent import attach_console
from lab.machine.boot import ipa_limit
from lab.machine.lab import Lab, list_labs
from lab.machine.qemu import l0_lacks


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="A lab config (YAML); see configs/lab.yaml.")
@name_option
@kernel_options
@click.option("--cpus", type=int, help="L1 vCPUs.")
@click.option("--memory", "-m", help="L1 memory, e.g. 2G.")
@click.option("--thp", type=click.Choice(THP_MODES), help="L1 transparent_hugepage at boot.")
@click.option("--kvm-mode", type=click.Choice(KVM_MODES),
              help="How L1's KVM runs (kvm-arm.mode; lab.kvm_mode, default vhe).")
@click.option("--nested", is_flag=True, help="Short for --kvm-mode nested (guest hypervisors; Linux 6.16+).")
@click.option("--gdb", type=int, metavar="PORT", help="A gdb stub for L1's kernel on 127.0.0.1:PORT.")
@click.option("--snapshot/--no-snapshot", default=None,
              help="Restore a saved ready L1 (saved by the first such up) instead of booting (lab.snapshot).")
@click.pass_obj
def up(progress: Progress, config, name, kernel, modules, cpus, memory, thp, kvm_mode, nested, gdb, snapshot) -> None:
    """Start a lab: build images if needed, boot L1 (or restore its snapshot), wait until KVM is ready."""
    if nested and kvm_mode not in (None, "nested"):
        raise UserError(f"--nested and --kvm-mode {kvm_mode}: give one of them")
    cfg = lab_config(config, name=name, kernel=kernel, modules=modules, cpus=cpus, memory=memory, thp=thp, gdb=gdb,
                     snapshot=snapshot, kvm_mode="nested" if nested else kvm_mode)
    lab = Lab(cfg.name, progress)
    info = lab.up(cfg, prestart=PRESTART[0] if PRESTART else None)
    state = lab.state() or {}
    how = {"restored": "restored from its snapshot", "saved": "booted, snapshot saved"}.get(
        (state.get("snapshot") or {}).get("how", ""), "L1 ready")
    click.echo(f"Lab '{cfg.name}' is up: {how} in {info.seconds:.1f} s (guest uptime {info.guest_uptime:.1f} s)")
    rows = [
        ("kernel", f"{info.release} ({state.get('kernel', {}).get('label', cfg.kernel)})"),
        ("KVM", f"{info.kvm_mode} mode, " + (f"IPA limit {bits} bits, " if (bits := ipa_limit(info.kvm_log)) else "")
         + f"/dev/kvm {'present' if info.kvm_device else 'MISSING'}"),
        ("THP", info.thp),
        ("L1", f"{cfg.cpus} vCPUs, {cfg.memory_words}"),
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
    EXIT_AT_ONCE.append(True)  # the lab runs on, its state written: nothing left to tidy


@main.command()
@name_option
@click.option("--all", "all_labs", is_flag=True, help="Stop every lab.")
def down(name, all_labs) -> None:
    """Stop a lab: QMP powerdown, then quit, then kill; remove its sockets and state."""
    names = list_labs() if all_labs else [default_name(name)]
    for lab_name in names:
        how = Lab(lab_name).down()
        click.echo(f"Lab '{lab_name}' is down ({how}).")


@main.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(name, as_json) -> None:
    """Show a lab (or, with no --name, every lab)."""
    names = [name] if name else (list_labs() or [default_name(None)])
    results = [Lab(n).status() for n in names]
    if as_json:
        click.echo(json.dumps(results[0] if name else results, indent=2))
        return
    for st in results:
        if not st["up"]:
            click.echo(f"{st['name']}: down" + (f" ({st['note']})" if st.get("note") else ""))
            continue
        click.echo(f"{st['name']}: {st['status']}, pid {st['pid']}, up {st['uptime']:.0f} s, "
                   f"{st['release']} ({st['kernel']}), KVM {st['kvm_mode']}"
                   + (f" (IPA {st['ipa_bits']} bits)" if st.get("ipa_bits") else "") + f", THP {st['thp']}, "
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
    status_code = Lab(default_name(name)).exec(list(command), sys.stdout.buffer, timeout=timeout)
    if status_code == 124 and timeout is not None:
        click.echo(f"kvmlab: the command ran past --timeout {timeout:g} s and was interrupted", err=True)
    sys.exit(status_code)


@main.command()
@name_option
def console(name) -> None:
    """Attach to L1's serial console (ttyAMA0). Leave with Ctrl-].

    Kernel messages appear here too; the full log is console.log in the lab directory.
    """
    lab = Lab(default_name(name))
    lab.require_up()
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
    with Lab(default_name(name)).qmp() as monitor:
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
    lab = Lab(default_name(name))
    if src.startswith(":") and not dst.startswith(":"):
        written = lab.pull(src[1:], Path(dst))
        click.echo(f"L1:{src[1:]} -> {written}")
    elif dst.startswith(":") and not src.startswith(":"):
        lab.push(Path(src), dst[1:])
        click.echo(f"{src} -> L1:{dst[1:]}")
    else:
        raise UserError("cp: exactly one of SRC and DST must be an L1 path written :PATH, e.g. :/root/file")

