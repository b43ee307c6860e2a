"""A named lab: one L0 QEMU running an L1 arm64 Linux with KVM, and its private directory.

Everything the CLI does is a method here, callable from Python and pytest:

    with Lab("default") as lab:
        lab.up(load_config())
        lab.exec(["cat", "/sys/kernel/mm/transparent_hugepage/enabled"], out=sys.stdout.buffer)

Leaving the `with` block takes down a lab the block brought up, and only that: a lab that
was already up when the block began stays up. `up()` alone (as `kvmlab up` does) leaves
the lab running. The steps live in modules of their own, in the manner of QEMU's
QEMUMachine: state and locking (state.py), the launch (`_pre_launch`, `_launch`,
`_post_launch` here; qemu.py builds the command), the wait for L1 (boot.py), snapshots
(snapshotting.py), commands (agent.py) and copies (transfer.py). `down()` asks L1 to
power off, then QEMU to quit, then kills it.
"""

from __future__ import annotations

import shlex
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lab.builder.build import Builder, KernelImage, Rootfs, Tools
from lab.config import NAME_RE, LabConfig
from lab.core.errors import LabBusy, LabError, UserError
from lab.core.progress import Progress
from lab.machine import boot, l1runner, qemu, share, snapshotting, transfer
from lab.machine import snapshot as snapshots
from lab.machine.agent import Agent, flock
from lab.machine.boot import PANIC, ReadyInfo
from lab.machine.logs import size_of
from lab.machine.prestart import Prestart, prepare_dir
from lab.machine.qemu import L0Process, LabPaths
from lab.machine.state import LabState, labs_root, list_labs

__all__ = ["Lab", "ReadyInfo", "list_labs"]


@dataclass
class _Launch:
    """What `_pre_launch` prepared for `_launch`."""

    command: list[str]
    kernel: KernelImage
    rootfs: Rootfs
    snap: snapshots.Snapshot | None
    restoring: bool
    #: L1's tools (booting, not restoring): L1 starts its runner with them once ready
    tools: Tools | None = None
    #: the initrd's parts and the modules L1 loads once ready (what a head start must match)
    initrd_parts: list[str] = field(default_factory=list)
    late_modules: str | None = None
    #: the head start's QEMU, taken over (prestart.py), and when it started (monotonic)
    prestarted: L0Process | None = None
    started_at: float = 0.0


def incoming_uri(vmstate: Path, binary: str) -> str:
    """-incoming for a saved state: QEMU reads the file itself where it can (file:, QEMU
    8.2 on; measured with QEMU 10 and a 155 MB state: running 0.19 s after the start
    against 0.25-0.42 s through `cat`)."""
    if (qemu.l0_version(qemu.qemu_version(binary)) or (0, 0)) >= (8, 2) and "," not in str(vmstate):
        return f"file:{vmstate}"
    return f"exec:cat {shlex.quote(str(vmstate))}"


class Lab:
    def __init__(self, name: str = "default", progress: Progress | None = None):
        if not NAME_RE.match(name):
            raise UserError(f"lab name {name!r}: use lowercase letters, digits, '.', '_' or '-' (at most 32)")
        self.name = name
        self.progress = progress or Progress(quiet=True)
        self.root = labs_root()
        self.paths = LabPaths(self.root / name)
        self.files = LabState(name, self.paths)
        #: set by up(): leaving a `with` block takes down only a lab it brought up
        self._brought_up = False

    def __enter__(self) -> Lab:
        return self

    def keep_running(self) -> None:
        """Leaving the `with` block leaves this lab up (`kvmlab test --keep-up`)."""
        self._brought_up = False

    def __exit__(self, *exc: object) -> None:
        if self._brought_up and self.running():
            self.down(timeout=5)

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        return self.files.read()

    def pid(self) -> int | None:
        return self.files.pid()

    def running(self) -> bool:
        """Its QEMU runs (up, or still starting)."""
        return self.pid() is not None

    def is_up(self) -> bool:
        """Up and ready: QEMU runs and L1 said it was ready."""
        return self.files.is_up()

    def require_up(self) -> dict[str, Any]:
        """The lab's state; an error (exit 1) if it is not up, or still starting."""
        return self.files.require_up()

    def reap_stale(self) -> str | None | bool:
        return self.files.reap_stale()

    # -- up ------------------------------------------------------------------------------
    def up(self, config: LabConfig, builder: Builder | None = None, prestart: Prestart | None = None) -> ReadyInfo:
        """Boots L1 (or restores it) and waits until it is ready. `prestart` (`kvmlab up`):
        a QEMU already started from the last such `up`'s command, taken over if it is the one
        this config asks for, else stopped (prestart.py); and the record for the next."""
        # The lock: held by the head start already, for this lab (else it is stopped below)
        guessed = prestart is not None and prestart.holds_lock
        if not guessed and self.is_up():
            raise self._already_up()
        # Input first (QEMU, the kernel, the images): a mistake there leaves no trace in
        # the runtime directory. The image cache has locks of its own.
        binary = qemu.find_qemu(config.qemu_binary)
        # Only a mode with needs asks the L0 its version (remembered in the cache): bad input
        # for the default mode writes nothing.
        if config.kvm_mode in boot.KVM_MODE_NEEDS:
            refusal = boot.kvm_mode_refusal(config.kvm_mode, None, qemu.qemu_version(binary))
            if refusal:
                raise boot.KvmModeUnavailable(refusal)
        builder = builder or Builder(progress=self.progress)
        kernel = builder.kernel(config)
        refusal = boot.kvm_mode_refusal(config.kvm_mode, kernel.release, None)
        if refusal:
            raise boot.KvmModeUnavailable(refusal)
        rootfs = builder.rootfs(config)
        if guessed and prestart is not None and prestart.files is not None and prestart.files.name != self.name:
            prestart.discard()
            prestart.release()
            guessed = False
        with (nullcontext() if guessed else self.files.lock()):
            if not guessed:
                cleaned = self.files.reap_stale_locked()
                if cleaned:
                    self.progress.note(f"lab {self.name!r}: {cleaned}")
                if self.is_up():
                    raise self._already_up()
            tools = builder.tools()
            launch = self._pre_launch(config, binary, kernel, rootfs, tools, prestart if guessed else None)
            if not launch.restoring:
                # L1 starts its scenario runner as soon as it is ready (a snapshot has it already)
                launch.tools = tools
            l0 = launch.prestarted or L0Process(launch.command, self.paths.qemu_log)
            try:
                ready = self._launch(l0, config, binary, launch)
            except BaseException:
                # Error, timeout or Ctrl-C: no QEMU is left behind; the logs stay for reading.
                l0.kill()
                self.files.clean()
                raise
            l0.detach()
            self._brought_up = True
            if prestart is not None and (launch.snap is None or launch.restoring):
                prestart.remember(self.name, launch.command, launch.initrd_parts, launch.late_modules,
                                  self.files.read() or {}, str(launch.snap.vmstate) if launch.snap else None)
            return ready

    def _pre_launch(self, config: LabConfig, binary: str, kernel: KernelImage, rootfs: Rootfs,
                    tools: Tools, prestart: Prestart | None = None) -> _Launch:
        """The L0 command line, the snapshot if any; a fresh private directory with the
        initrd, unless the head start's QEMU (prestart) is this very command: then it is
        taken over (else stopped, and its directory emptied here)."""
        command = qemu.build_command(config, self.paths, kernel.image, rootfs.image, binary)
        snap = None
        if config.snapshot:
            key, inputs = snapshots.key_for(command, self.paths.dir, self.name, kernel.manifest.get("key", ""),
                                            rootfs.manifest["key"], tools.key, binary)
            snap = snapshots.lookup(key, inputs)
        restoring = snap is not None and snap.exists()
        if restoring:
            assert snap is not None
            # QEMU loads the saved state instead of booting; L1 runs on from where it was saved.
            command = [*command, "-incoming", incoming_uri(snap.vmstate, binary)]
        # initramfs (busybox, /init) followed by the kernel's modules: one initrd.
        parts = [str(rootfs.initramfs)] + ([str(kernel.modules_cpio)] if kernel.modules_cpio is not None else [])
        late = (str(kernel.late_modules) if not restoring and kernel.late_modules is not None
                and kernel.late_modules.is_dir() else None)
        launch = _Launch(command, kernel, rootfs, snap, restoring, initrd_parts=parts, late_modules=late)
        if prestart is not None:
            if (snap is None or restoring) and prestart.fits(command, parts, late,
                                                             str(snap.vmstate) if snap and restoring else None):
                launch.prestarted, launch.started_at = prestart.adopt(), prestart.started
                return launch
            prestart.discard()
        prepare_dir(self.files, parts, late)
        return launch

    def _launch(self, l0: L0Process, config: LabConfig, binary: str, launch: _Launch) -> ReadyInfo:
        """Starts QEMU and waits for L1: booted (and saved, with --snapshot) or restored."""
        kernel, snap = launch.kernel, launch.snap
        started = launch.started_at or time.monotonic()
        state = self._state_record(config, launch)
        what = (f"Restoring L1 from its snapshot ({kernel.label}, {snap.key[:12]})" if launch.restoring and snap else
                f"Booting L1 ({kernel.label}, {config.cpus} CPUs, {config.memory_words}, THP {config.thp})")
        with self.progress.step(what) as step:
            # (started already when it is the head start's QEMU: prestart.py)
            pid = l0.pid if launch.prestarted is not None else l0.start()
            # QEMU's pid on record first: a kvmlab killed from here on leaves a QEMU that the
            # next command finds and stops (State.reap_stale_locked).
            state.update(pid=pid, started_at=time.time() - (time.monotonic() - started))
            if launch.prestarted is not None:
                state["prestarted"] = True
            self.files.write(state)
            if launch.tools is not None:
                # Wanted once L1 is ready (images/l1/rootfs/kvmlab/late): copied while it boots.
                # (A lab saved after its boot reads QEMU's files after the save, in resume.)
                l1runner.start_early(self.paths.share, launch.tools, warm=snap is None or launch.restoring)
            # Remembered per binary; the first time, asked while L1 boots.
            state["qemu_version"] = qemu.qemu_version(binary)
            self.files.write(state)
            if launch.restoring and snap is not None:
                ready = snapshotting.restore(self.paths, l0, config, started, snap)
                state["snapshot"]["how"] = "restored"
            else:
                ready = boot.wait_ready(self.paths, l0, config, started)
                if snap is not None:
                    if launch.tools is not None:  # started early by L1: waited for here
                        # A restored lab starts with L1's scenario runner ready.
                        step.update("starting L1's scenario runner")
                        l1runner.start(self.paths, launch.tools)
                    step.update("saving its snapshot")
                    saved = snapshotting.save(self.paths, l0, snap, ready, self.progress)
                    state["snapshot"]["how"] = "saved" if saved else "not saved"
                    ready.seconds = round(time.monotonic() - started, 2)
        self._post_launch(state, ready)
        return ready

    def _post_launch(self, state: dict[str, Any], ready: ReadyInfo) -> None:
        """L1 is ready: the state file says so (and what L1 reported)."""
        state["ready"] = ready.as_dict()
        self.files.write(state)

    def _state_record(self, config: LabConfig, launch: _Launch) -> dict[str, Any]:
        kernel, rootfs, snap = launch.kernel, launch.rootfs, launch.snap
        state: dict[str, Any] = {
            "name": self.name, "config": config.as_dict(), "config_files": config.sources,
            "command": launch.command,
            "kernel": {"image": str(kernel.image), "release": kernel.release, "label": kernel.label,
                       "manifest_key": kernel.manifest.get("key", "")},
            "rootfs": {"root": str(rootfs.root), "image": str(rootfs.image), "manifest_key": rootfs.manifest["key"]},
            "paths": {"dir": str(self.paths.dir), "qmp": str(self.paths.qmp),
                      "console": str(self.paths.console), "agent": str(self.paths.agent),
                      "console_log": str(self.paths.console_log), "share": str(self.paths.share)},
        }
        if snap is not None:
            state["snapshot"] = {"key": snap.key, "file": str(snap.vmstate),
                                 "how": "restoring" if launch.restoring else "booting"}
        return state

    def _already_up(self) -> LabBusy:
        return LabBusy(f"lab {self.name!r} is already up (pid {self.pid()}); "
                       f"`kvmlab down --name {self.name}` first, or pick another --name")

    # -- down ----------------------------------------------------------------------------
    def down(self, timeout: float = 10.0) -> str:
        """Powers L1 down (QMP system_powerdown), then `quit`, then SIGKILL. Returns how it ended."""
        with self.files.lock():
            state = self.state()
            pid = self.pid()
            if pid is None:
                self.files.clean()
                if state is not None:
                    return "was not running (stale state removed)"
                raise LabError(f"lab {self.name!r} is not up")
            how = "killed"
            try:
                # Right after `up`, L1 may still be arming its power button (images/l1/rootfs/kvmlab/late).
                button = boot.wait_flags(self.paths, pid) == "powerbutton"
                if button:
                    with self.qmp(timeout=5) as monitor:
                        monitor.cmd("system_powerdown")
                if qemu.wait_pid(pid, timeout if button else 0):
                    how = "powered down"
                else:
                    with self.qmp(timeout=5) as monitor:
                        monitor.cmd("quit")
                    if qemu.wait_pid(pid, 5):
                        how = "quit"
            except Exception:  # QMP gone or QEMU stuck: the kill below does it.
                pass
            if qemu.pid_alive(pid):
                qemu.kill_pid(pid)
            else:
                qemu.wait_pid(pid, 1)  # reap it if it is ours
            self.files.clean()
            self._brought_up = False
            return how

    # -- control -------------------------------------------------------------------------
    @contextmanager
    def qmp(self, timeout: float = 10.0) -> Iterator[Any]:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self.require_up()
        with flock(self.paths.dir / "qmp.lock"):
            monitor = QEMUMonitorProtocol(str(self.paths.qmp))
            try:
                monitor.connect()
            except Exception as exc:
                raise LabError(f"cannot connect to QMP at {self.paths.qmp}: {exc}") from None
            monitor.settimeout(timeout)
            try:
                yield monitor
            finally:
                try:
                    monitor.close()
                except Exception:
                    pass

    def status(self) -> dict[str, Any]:
        state = self.state()
        if state is not None and not self.is_up():
            cleaned = self.reap_stale()
            note = "starting" if cleaned is False else cleaned or ""
            return {"name": self.name, "up": False, "note": note}
        pid = self.pid()
        if state is None or pid is None:
            return {"name": self.name, "up": False, "note": ""}
        with self.qmp(timeout=5) as monitor:
            run_state = monitor.cmd("query-status")
        ready = state.get("ready", {})
        return {
            "name": self.name, "up": True, "pid": pid, "status": run_state.get("status"),
            "uptime": round(time.time() - state["started_at"], 1),
            "kernel": state["kernel"]["label"], "release": ready.get("release"),
            "kvm_mode": ready.get("kvm_mode"), "ipa_bits": boot.ipa_limit(ready.get("kvm_log") or []),
            "thp": ready.get("thp"), "cpus": state["config"]["lab"]["cpus"], "memory": state["config"]["lab"]["memory"],
            "qemu_version": state["qemu_version"], "paths": state["paths"],
        }

    def agent(self) -> Agent:
        """L1's command channel, watched: QEMU gone, L1 panicked or L1 filling the host's disk
        through the share (the lab is stopped then) ends the wait at once."""
        pid = int(self.require_up()["pid"])
        console = self.paths.console_log
        seen = [size_of(console)]
        disk = share.DiskWatch(self.paths.share)

        def watch() -> str | None:
            if not qemu.pid_alive(pid):
                return f"L0 QEMU (pid {pid}) exited in the middle of a command"
            filled = disk.problem()
            if filled:
                qemu.kill_pid(pid)
                return filled
            try:
                with open(console, "rb") as f:
                    f.seek(seen[0])
                    new = f.read()
            except OSError:
                return None
            # Only whole lines: a panic message split across two reads is seen on the next.
            cut = new.rfind(b"\n") + 1
            seen[0] += cut
            match = PANIC.search(new[:cut].decode(errors="replace"))
            return f"L1 panicked: {match.group(0).strip()}" if match else None

        return Agent(self.paths, watch=watch)

    def exec(self, command: list[str] | str, out: BinaryIO, timeout: float | None = None) -> int:
        return self.agent().run(command, out, timeout=timeout)

    def run(self, command: list[str] | str, timeout: float | None = 60,
            via: Callable[[str, int, str], str] | None = None) -> tuple[int, str]:
        """Runs a command in L1 and returns (status, output) — for code and tests (`via`:
        Agent.run's)."""
        return self.agent().run_capture(command, timeout=timeout, via=via)

    # -- files ---------------------------------------------------------------------------
    def push(self, src: Path, dst: str) -> None:
        """Copies a host file into L1 (through the share; the console is too slow)."""
        self.require_up()
        transfer.push(self.paths, lambda script: self.run(script, timeout=None), src, dst)

    def pull(self, src: str, dst: Path) -> Path:
        """Copies an L1 file to the host; returns the host path written."""
        self.require_up()
        return transfer.pull(self.paths, lambda script: self.run(script, timeout=None), src, dst)
