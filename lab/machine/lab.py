"""A named lab: one L0 QEMU running an L1 arm64 Linux with KVM, and its private directory.

Everything the CLI does is a method here, callable from Python and pytest:

    lab = Lab("default")
    info = lab.up(load_config())
    lab.exec(["cat", "/sys/kernel/mm/transparent_hugepage/enabled"], out=sys.stdout.buffer)
    lab.down()
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from lab.config import LabConfig, NAME_RE
from lab.core.errors import LabBusy, LabError, LaunchError, UserError
from lab.builder.build import Builder
from lab.machine import qemu
from lab.machine import snapshot as snapshots
from lab.machine.agent import GUEST_SHARE, Agent, flock
from lab.machine.qemu import L0Process, LabPaths
from lab.core.paths import private_dir, runtime_dir
from lab.core.progress import Progress

#: Console lines that mean L1 will not become ready: stop waiting at once.
FATAL_BOOT = re.compile(r"Kernel panic|kvmlab-initramfs: FAILED|Unable to handle kernel|Internal error:")
#: A panic in L1 once it is up: whatever was waiting for L1 stops waiting.
PANIC = re.compile(r"Kernel panic - not syncing:[^\n]*")


@dataclass
class ReadyInfo:
    release: str
    kvm_device: bool
    kvm_mode: str
    kvm_log: list[str]
    thp: str
    seconds: float
    guest_uptime: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_ready(text: str) -> dict[str, str]:
    """The key=value file L1's agent writes when it is ready (images/l1/rootfs/kvmlab/agent)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def kvm_messages(log: str) -> list[str]:
    """KVM's init messages ("kvm [1]: ...") from an L1 log, without timestamps."""
    return [m.group(1) for m in re.finditer(r"(kvm \[\d+\]: [^\r\n]*)", log)]


def kvm_mode(kvm_log: list[str]) -> str:
    """'VHE', 'nVHE', 'hVHE' or 'protected' from KVM's init message; '' if KVM did not start."""
    for line in kvm_log:
        match = re.search(r"\b(VHE|nVHE|hVHE|Protected nVHE|Hyp) mode initialized successfully", line)
        if match:
            return {"Hyp": "nVHE", "Protected nVHE": "protected"}.get(match.group(1), match.group(1))
    return ""


def thp_mode(enabled: str) -> str:
    match = re.search(r"\[(\w+)\]", enabled)
    return match.group(1) if match else enabled


_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def tail(path: Path, lines: int = 25) -> str:
    try:
        data = path.read_bytes()[-64 * 1024:]
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    # A console carries the shell's terminal queries (ESC [ 6 n): not for a report.
    text = _CONTROL.sub("", _ESCAPES.sub("", text))
    return "\n".join(text.splitlines()[-lines:])


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


def list_labs() -> list[str]:
    labs = runtime_dir() / "labs"
    if not labs.is_dir():
        return []
    return sorted(p.name for p in labs.iterdir() if p.is_dir() and (p / "lab.json").exists())


class Lab:
    def __init__(self, name: str = "default", progress: Progress | None = None):
        if not NAME_RE.match(name):
            raise UserError(f"lab name {name!r}: use lowercase letters, digits, '.', '_' or '-' (at most 32)")
        self.name = name
        self.progress = progress or Progress(quiet=True)
        self.root = runtime_dir() / "labs"
        self.paths = LabPaths(self.root / name)

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.paths.state.read_text())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The lab's QEMU pid while it runs, or None; a dead pid, or one reused by another
        process (even another lab's QEMU), counts as not running."""
        state = self.state()
        if not state or "pid" not in state:
            return None
        pid = int(state["pid"])
        return pid if qemu.pid_alive(pid) and qemu.pid_is_lab(pid, self.paths) else None

    def running(self) -> bool:
        """Its QEMU runs (up, or still starting)."""
        return self.pid() is not None

    def is_up(self) -> bool:
        """Up and ready: QEMU runs and L1 said it was ready."""
        state = self.state()
        return self.pid() is not None and bool(state and state.get("ready"))

    def _require_up(self) -> dict[str, Any]:
        state = self.state()
        if not state or self.pid() is None or not state.get("ready"):
            if state and not self.reap_stale():
                raise LabBusy(f"lab {self.name!r} is still starting (another kvmlab is bringing it up); "
                              "wait for it, or pick another --name")
            raise LabError(f"lab {self.name!r} is not up; start it with `kvmlab up --name {self.name}`")
        return state

    def reap_stale(self) -> str | None | bool:
        """Cleans what a lab whose kvmlab was killed left behind: state whose QEMU is gone
        (sockets, pid file), or a QEMU a killed `up` never saw ready. Returns what it did
        (None: nothing to do), or False while another kvmlab is starting the lab."""
        try:
            with self._up_lock():
                return self._reap_stale_locked()
        except LabBusy:
            return False

    def _reap_stale_locked(self) -> str | None:
        state = self.state()
        if state is None:
            return None
        pid = self.pid()
        if pid is None:
            self._clean_state()
            return "stale state of a lab that is gone removed"
        if not state.get("ready"):
            # Nobody holds the lock, yet L1 was never seen ready: the `up` that started
            # this QEMU was killed. It is not a lab anyone can use: stop it.
            qemu.kill_pid(pid)
            self._clean_state()
            return f"QEMU (pid {pid}) left starting by a kvmlab that was killed: stopped"
        return None

    def _clean_state(self, keep_logs: bool = True) -> None:
        """Removes what a stopped lab leaves: sockets, pid, state, initrd, share."""
        d = self.paths.dir
        if not d.exists():
            return
        for path in [*self.paths.sockets(), self.paths.pidfile, self.paths.state, self.paths.initrd,
                     d / "agent.lock", d / "qmp.lock"]:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.paths.share, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(d, ignore_errors=True)

    @contextmanager
    def _up_lock(self) -> Iterator[None]:
        """Only one `up` (or `down`) of a name at a time; the loser is told at once."""
        private_dir(self.root.parent)
        private_dir(self.root)
        with open(self.root / f".{self.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LabBusy(f"lab {self.name!r} is being started or stopped by another kvmlab; "
                              "wait for it, or pick another --name") from None
            yield

    # -- up ------------------------------------------------------------------------------
    def up(self, config: LabConfig, builder: Builder | None = None) -> ReadyInfo:
        if self.is_up():
            raise self._already_up()
        # Input first (QEMU, the kernel, the images): a mistake there leaves no trace in
        # the runtime directory. The image cache has locks of its own.
        binary = qemu.find_qemu(config.qemu_binary)
        builder = builder or Builder(progress=self.progress)
        kernel = builder.kernel(config)
        rootfs = builder.rootfs(config)
        with self._up_lock():
            cleaned = self._reap_stale_locked()
            if cleaned:
                self.progress.note(f"lab {self.name!r}: {cleaned}")
            if self.is_up():
                raise self._already_up()
            if os.path.lexists(self.paths.dir):
                private_dir(self.paths.dir)  # ours, a real directory: only then is it emptied
            self._clean_state(keep_logs=False)

            private_dir(self.paths.dir)
            self.paths.share.mkdir(mode=0o700)
            self.paths.ready.parent.mkdir()
            # initramfs (busybox, /init) followed by the kernel's modules: one initrd.
            with open(self.paths.initrd, "wb", opener=qemu.private_opener) as initrd:
                initrd.write(rootfs.initramfs.read_bytes())
                if kernel.modules_cpio is not None:
                    initrd.write(kernel.modules_cpio.read_bytes())

            command = qemu.build_command(config, self.paths, kernel.image, rootfs.image, binary)
            snap = None
            if config.snapshot:
                key, inputs = snapshots.key_for(command, self.paths.dir, self.name, kernel.manifest.get("key", ""),
                                                rootfs.manifest["key"], binary)
                snap = snapshots.lookup(key, inputs)
            restoring = snap is not None and snap.exists()
            if restoring:
                # QEMU loads the saved state instead of booting; L1 runs on from where it was saved.
                command = [*command, "-incoming", f"exec:cat {shlex.quote(str(snap.vmstate))}"]
            elif kernel.late_modules is not None and kernel.late_modules.is_dir():
                shutil.copytree(kernel.late_modules, self.paths.ready.parent / "modules")
            l0 = L0Process(command, self.paths.qemu_log)
            started = time.monotonic()
            state = {
                "name": self.name, "config": config.as_dict(), "config_files": config.sources,
                "command": command,
                "kernel": {"image": str(kernel.image), "release": kernel.release, "label": kernel.label,
                           "manifest_key": kernel.manifest.get("key", "")},
                "rootfs": {"root": str(rootfs.root), "image": str(rootfs.image), "manifest_key": rootfs.manifest["key"]},
                "paths": {"dir": str(self.paths.dir), "qmp": str(self.paths.qmp),
                          "console": str(self.paths.console), "agent": str(self.paths.agent),
                          "console_log": str(self.paths.console_log), "share": str(self.paths.share)},
            }
            if snap is not None:
                state["snapshot"] = {"key": snap.key, "file": str(snap.vmstate), "how": "restoring" if restoring else "booting"}
            try:
                what = (f"Restoring L1 from its snapshot ({kernel.label}, {snap.key[:12]})" if restoring else
                        f"Booting L1 ({kernel.label}, {config.cpus} CPUs, {config.memory_mib} MiB, THP {config.thp})")
                with self.progress.step(what) as step:
                    pid = l0.start()
                    # Remembered per binary; the first time, asked while L1 boots.
                    state.update(pid=pid, started_at=time.time(), qemu_version=qemu.qemu_version(binary))
                    _write_json(self.paths.state, state)
                    if restoring:
                        ready = self._restore(l0, config, started, snap)
                        state["snapshot"]["how"] = "restored"
                    else:
                        ready = self._wait_ready(l0, config, started)
                        if snap is not None:
                            step.update("saving its snapshot")
                            if self._save_snapshot(l0, snap, ready):
                                state["snapshot"]["how"] = "saved"
                            else:
                                state["snapshot"]["how"] = "not saved"
                            ready.seconds = round(time.monotonic() - started, 2)
                state["ready"] = ready.as_dict()
                _write_json(self.paths.state, state)
            except BaseException:
                # Error, timeout or Ctrl-C: no QEMU is left behind; the logs stay for reading.
                l0.kill()
                self._clean_state()
                raise
            l0.detach()
            return ready

    # -- snapshots -----------------------------------------------------------------------
    def _monitor(self, timeout: float = 10.0):
        """QMP while `up` still holds the lab (not yet ready, so not through `qmp()`)."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        monitor = QEMUMonitorProtocol(str(self.paths.qmp))
        monitor.connect()
        monitor.settimeout(timeout)
        return monitor

    def _private_sockets(self) -> None:
        """QEMU made the sockets 0700 (umask 077); a socket needs no execute bit: 0600."""
        for sock in self.paths.sockets():
            os.chmod(sock, 0o600)

    def _wait_flags(self, pid: int, timeout: float = 5.0) -> str:
        """'powerbutton' or 'no-powerbutton' once L1's late start-up is done ('' if not seen)."""
        flags = self.paths.share / ".kvmlab"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and qemu.pid_alive(pid):
            for flag in ("powerbutton", "no-powerbutton"):
                if (flags / flag).exists():
                    return flag
            time.sleep(0.02)
        return ""

    def _save_snapshot(self, l0: L0Process, snap: snapshots.Snapshot, ready: ReadyInfo) -> bool:
        """Saves the L1 that just became ready, then lets it run on. False: not saved (another
        kvmlab is saving it, or QEMU could not; the lab is up all the same)."""
        tmp = snapshots.prepare(snap)
        lock = open(snap.dir / ".lock", "w")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if snap.exists():
                return False
            # Late start-up (optional modules, power button) is over, or the state would
            # freeze it half done.
            flag = self._wait_flags(l0.pid, 10.0)
            status, output = Agent(self.paths).run_capture("/kvmlab/snapshot save", timeout=30)
            if status != 0:
                self.progress.note(f"the snapshot was not saved (L1: {output.strip()}); the lab runs on, booted")
                return False
            saved = False
            monitor = self._monitor(timeout=30)
            try:
                monitor.cmd("stop")
                # QEMU's default migration bandwidth (32 MiB/s) is for live networks; a file takes all.
                monitor.cmd_raw("migrate-set-parameters", {"max-bandwidth": 1 << 40})
                reply = monitor.cmd_raw("migrate", {"uri": f"exec:cat > {shlex.quote(str(tmp))}"})
                if "error" in reply:
                    raise LabError(f"QEMU refused: {reply['error'].get('desc')}")
                deadline = time.monotonic() + 300
                while True:
                    info = monitor.cmd_raw("query-migrate").get("return", {})
                    if info.get("status") == "completed":
                        break
                    if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                        raise LabError(info.get("error-desc", info.get("status", "timed out")))
                    time.sleep(0.05)
                snapshots.commit(snap, tmp, {"ready": ready.as_dict(), "flag": flag, "inputs": snap.inputs})
                saved = True
            except (LabError, OSError) as exc:
                # The lab itself is fine: it runs on, booted; the next `up --snapshot` tries again.
                self.progress.note(f"the snapshot was not saved ({exc}); the lab runs on, booted")
            finally:
                tmp.unlink(missing_ok=True)
                try:
                    monitor.cmd("cont")
                finally:
                    monitor.close()
            self._resume()
            return saved
        finally:
            lock.close()

    def _resume(self) -> float:
        """After a restore (or a save): the share, the clock, a reseeded CRNG. Returns L1's uptime."""
        status, output = Agent(self.paths).run_capture(
            f"/kvmlab/snapshot resume {time.time_ns()} {secrets.token_hex(64)}", timeout=30)
        if status != 0:
            raise LaunchError(f"L1 did not resume after its snapshot: {output.strip()}", command=[])
        match = re.search(r"uptime=([\d.]+)", output)
        return float(match.group(1)) if match else 0.0

    def _restore(self, l0: L0Process, config: LabConfig, started: float, snap: snapshots.Snapshot) -> ReadyInfo:
        meta = snap.meta() or {}
        deadline = started + config.boot_timeout
        monitor = None
        try:
            while True:
                code = l0.exit_code()
                if code is not None:
                    raise LaunchError(
                        f"QEMU exited with status {code} while restoring the snapshot {snap.dir}; "
                        "`kvmlab images clean --snapshots` removes it, and the next `up --snapshot` saves anew",
                        command=l0.command, exit_code=code, detail=_detail(self.paths, qemu_output=True))
                if time.monotonic() > deadline:
                    raise LaunchError(f"L1 was not restored after {config.boot_timeout:g} s (lab.boot_timeout)",
                                      command=l0.command, detail=_detail(self.paths, qemu_output=True))
                try:
                    if monitor is None and self.paths.qmp.exists():
                        monitor = self._monitor(timeout=5)
                    if monitor is not None:
                        run_state = monitor.cmd_raw("query-status").get("return", {}).get("status")
                        if run_state == "running":
                            break
                        if run_state == "paused":  # loaded; it was saved stopped
                            monitor.cmd_raw("cont")
                except Exception:  # QMP not listening yet, or QEMU on its way out (seen above)
                    monitor = None
                time.sleep(0.01)
        finally:
            if monitor is not None:
                monitor.close()
        self._private_sockets()
        uptime = self._resume()
        if meta.get("flag"):
            (self.paths.share / ".kvmlab" / meta["flag"]).touch()
        saved = meta.get("ready", {})
        return ReadyInfo(release=saved.get("release", "?"), kvm_device=saved.get("kvm_device", False),
                         kvm_mode=saved.get("kvm_mode", ""), kvm_log=saved.get("kvm_log", []),
                         thp=saved.get("thp", ""), seconds=round(time.monotonic() - started, 2),
                         guest_uptime=uptime)

    def _already_up(self) -> LabBusy:
        return LabBusy(f"lab {self.name!r} is already up (pid {self.pid()}); "
                       f"`kvmlab down --name {self.name}` first, or pick another --name")

    def _ready_written(self) -> bool:
        try:
            return self.paths.ready.read_text().endswith("end=1\n")
        except FileNotFoundError:
            return False

    def _wait_ready(self, l0: L0Process, config: LabConfig, started: float) -> ReadyInfo:
        deadline = started + config.boot_timeout
        checked_console = 0
        private = False
        while not self._ready_written():
            if not private and all(p.exists() for p in self.paths.sockets()):
                self._private_sockets()
                private = True
            code = l0.exit_code()
            if code is not None:
                how = f"was killed by signal {-code} ({_signame(-code)})" if code < 0 else f"exited with status {code}"
                raise LaunchError(
                    f"QEMU {how} before L1 was ready",
                    command=l0.command, exit_code=code,
                    detail=_detail(self.paths, qemu_output=True))
            if time.monotonic() - checked_console > 0.5:
                checked_console = time.monotonic()
                console = tail(self.paths.console_log, 60)
                if FATAL_BOOT.search(console):
                    raise LaunchError("L1 failed to boot", command=l0.command, detail=_detail(self.paths))
            if time.monotonic() > deadline:
                raise LaunchError(f"L1 was not ready after {config.boot_timeout:g} s (lab.boot_timeout)",
                                  command=l0.command, detail=_detail(self.paths))
            time.sleep(0.01)
        seconds = time.monotonic() - started
        if not private:
            self._private_sockets()
        values = parse_ready(self.paths.ready.read_text())
        kvm_log = kvm_messages(self.paths.console_log.read_text(errors="replace"))
        if not kvm_mode(kvm_log):
            # A quiet console (loglevel) keeps KVM's messages out of the console log.
            _, dmesg = Agent(self.paths).run_capture("dmesg")
            kvm_log = kvm_messages(dmesg)
        info = ReadyInfo(
            release=values.get("release", "?"), kvm_device=values.get("kvm_device") == "yes",
            kvm_mode=kvm_mode(kvm_log), kvm_log=kvm_log,
            thp=thp_mode(values.get("thp", "")), seconds=round(seconds, 2),
            guest_uptime=float(values.get("uptime", "0") or 0))
        if not info.kvm_device or not info.kvm_mode:
            raise LaunchError(
                "KVM did not initialise in L1 (" + ("no /dev/kvm" if not info.kvm_device else
                                                   "no 'mode initialized successfully' message") + "); "
                "KVM in L1 needs EL2: -M virt,virtualization=on and a -cpu that has it (max does)",
                command=l0.command,
                detail="\n".join(["L1's kvm messages:"] + (info.kvm_log or ["(none)"])))
        return info

    # -- down ----------------------------------------------------------------------------
    def down(self, timeout: float = 10.0) -> str:
        """Powers L1 down (QMP system_powerdown), then `quit`, then SIGKILL. Returns how it ended."""
        with self._up_lock():
            state = self.state()
            pid = self.pid()
            if pid is None:
                had_state = state is not None
                self._clean_state()
                if had_state:
                    return "was not running (stale state removed)"
                raise LabError(f"lab {self.name!r} is not up")
            how = "killed"
            try:
                # Right after `up`, L1 may still be arming its power button (images/l1/rootfs/kvmlab/late).
                button = self._wait_flags(pid) == "powerbutton"
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
            self._clean_state()
            return how

    # -- control -------------------------------------------------------------------------
    @contextmanager
    def qmp(self, timeout: float = 10.0):
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self._require_up()
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
        return {
            "name": self.name, "up": True, "pid": pid, "status": run_state.get("status"),
            "uptime": round(time.time() - state["started_at"], 1),
            "kernel": state["kernel"]["label"], "release": state.get("ready", {}).get("release"),
            "kvm_mode": state.get("ready", {}).get("kvm_mode"), "thp": state.get("ready", {}).get("thp"),
            "cpus": state["config"]["lab"]["cpus"], "memory": state["config"]["lab"]["memory"],
            "qemu_version": state["qemu_version"], "paths": state["paths"],
        }

    def _agent(self) -> Agent:
        """L1's command channel, watched: QEMU gone or L1 panicked ends the wait at once."""
        state = self._require_up()
        pid = int(state["pid"])
        console = self.paths.console_log
        seen = [console.stat().st_size if console.exists() else 0]

        def watch() -> str | None:
            if not qemu.pid_alive(pid):
                return f"L0 QEMU (pid {pid}) exited in the middle of a command"
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
        return self._agent().run(command, out, timeout=timeout)

    def run(self, command: list[str] | str, timeout: float | None = 60) -> tuple[int, str]:
        """Runs a command in L1 and returns (status, output) — for code and tests."""
        return self._agent().run_capture(command, timeout=timeout)

    # -- files ---------------------------------------------------------------------------
    def _xfer(self) -> tuple[Path, str]:
        name = f"xfer-{os.getpid()}-{time.monotonic_ns()}"
        host = self.paths.share / ".kvmlab" / name
        host.parent.mkdir(parents=True, exist_ok=True)
        return host, f"{GUEST_SHARE}/.kvmlab/{name}"

    def push(self, src: Path, dst: str) -> None:
        """Copies a host file into L1 (through the share; the console is too slow)."""
        self._require_up()
        if not src.is_file():
            raise UserError(f"{src}: no such file on the host")
        host, guest = self._xfer()
        try:
            shutil.copyfile(src, host)
            script = (f'd={_sh(dst)}; if [ -d "$d" ]; then d="$d/"{_sh(src.name)}; fi; '
                      f'cp {guest} "$d"')
            status, output = self.run(script, timeout=None)
            if status != 0:
                raise LabError(f"copying to L1:{dst} failed: {output.strip()}")
        finally:
            host.unlink(missing_ok=True)

    def pull(self, src: str, dst: Path) -> Path:
        """Copies an L1 file to the host; returns the host path written."""
        self._require_up()
        if dst.is_dir():
            dst = dst / os.path.basename(src.rstrip("/"))
        if not dst.parent.is_dir():
            raise UserError(f"{dst.parent}: no such directory on the host")
        host, guest = self._xfer()
        try:
            status, output = self.run(f"cp {_sh(src)} {guest}", timeout=None)
            if status != 0:
                raise LabError(f"copying L1:{src} failed: {output.strip()}")
            try:
                os.replace(host, dst)
            except OSError:
                # Another file system: copy beside the destination, then rename (no half file).
                tmp = dst.with_name(f".{dst.name}.kvmlab-tmp")
                shutil.copyfile(host, tmp)
                os.replace(tmp, dst)
            return dst
        finally:
            host.unlink(missing_ok=True)


def _sh(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _detail(paths: LabPaths, qemu_output: bool = False) -> str:
    parts = []
    if qemu_output:
        out = tail(paths.qemu_log, 15)
        parts.append("QEMU said:\n" + (out or "(nothing)"))
    console = tail(paths.console_log, 25)
    parts.append(f"last lines of the L1 console ({paths.console_log}):\n" + (console or "(empty)"))
    return "\n".join(parts)


def _signame(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "?"
