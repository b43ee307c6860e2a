"""Waiting for L1 to be ready after a boot: the ready file L1's agent writes, the console
watched for a failed boot, KVM's init messages read for its mode."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from lab.config import LabConfig
from lab.core.errors import LaunchError
from lab.machine import qemu, share
from lab.machine.agent import Agent
from lab.machine.logs import detail, signame, tail
from lab.machine.qemu import L0Process, LabPaths

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


def private_sockets(paths: LabPaths) -> None:
    """QEMU made the sockets 0700 (umask 077); a socket needs no execute bit: 0600."""
    for sock in paths.sockets():
        os.chmod(sock, 0o600)


def wait_flags(paths: LabPaths, pid: int, timeout: float = 5.0) -> str:
    """'powerbutton' or 'no-powerbutton' once L1's late start-up is done ('' if not seen)."""
    flags = paths.share / ".kvmlab"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and qemu.pid_alive(pid):
        for flag in ("powerbutton", "no-powerbutton"):
            if (flags / flag).exists():
                return flag
        time.sleep(0.02)
    return ""


def _read_ready(paths: LabPaths) -> str:
    """L1's ready file (written through the share: read as untrusted, 64 KiB at most)."""
    return share.read_text(paths.share, ".kvmlab/ready", 64 * 1024)


def _ready_written(paths: LabPaths) -> bool:
    try:
        return _read_ready(paths).endswith("end=1\n")
    except FileNotFoundError:
        return False


def wait_ready(paths: LabPaths, l0: L0Process, config: LabConfig, started: float) -> ReadyInfo:
    """Waits for L1's ready file; QEMU gone, a fatal console line or the boot timeout ends
    the wait with a LaunchError that carries QEMU's and the console's last lines."""
    deadline = started + config.boot_timeout
    checked_console = 0.0
    private = False
    while not _ready_written(paths):
        if not private and all(p.exists() for p in paths.sockets()):
            private_sockets(paths)
            private = True
        code = l0.exit_code()
        if code is not None:
            how = f"was killed by signal {-code} ({signame(-code)})" if code < 0 else f"exited with status {code}"
            raise LaunchError(f"QEMU {how} before L1 was ready", command=l0.command, exit_code=code,
                              detail=detail(paths, qemu_output=True))
        if time.monotonic() - checked_console > 0.5:
            checked_console = time.monotonic()
            if FATAL_BOOT.search(tail(paths.console_log, 60)):
                raise LaunchError("L1 failed to boot", command=l0.command, detail=detail(paths))
        if time.monotonic() > deadline:
            raise LaunchError(f"L1 was not ready after {config.boot_timeout:g} s (lab.boot_timeout)",
                              command=l0.command, detail=detail(paths))
        time.sleep(0.01)
    seconds = time.monotonic() - started
    if not private:
        private_sockets(paths)
    values = parse_ready(_read_ready(paths))
    kvm_log = kvm_messages(paths.console_log.read_text(errors="replace"))
    if not kvm_mode(kvm_log):
        # A quiet console (loglevel) keeps KVM's messages out of the console log.
        _, dmesg = Agent(paths).run_capture("dmesg")
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
