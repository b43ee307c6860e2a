"""Waiting for L1 to be ready after a boot: the ready file L1's agent writes, the console
watched for a failed boot, KVM's init messages read for its mode."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from lab.config import LabConfig
from lab.core.errors import LaunchError, UserError
from lab.core.versions import version_tuple
from lab.core.watch import Waker
from lab.machine import qemu, share
from lab.machine.agent import Agent
from lab.machine.logs import FAILED_STEP, PANIC_LINE, detail, signame, tail
from lab.machine.qemu import L0Process, LabPaths

#: Console lines that mean L1 will not become ready: stop waiting at once.
FATAL_BOOT = re.compile(rf"Kernel panic|{FAILED_STEP}|Unable to handle kernel|Internal error:")
#: A panic in L1 once it is up: whatever was waiting for L1 stops waiting.
PANIC = re.compile(PANIC_LINE)


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


_KVM_INIT = re.compile(r"\b(?:(Protected|Hyp) )?([nh]?)VHE(\+NV2)? mode initialized successfully"
                       r"|\bHyp mode initialized successfully")


def kvm_mode(kvm_log: list[str]) -> str:
    """The mode KVM's init message names ('' if KVM did not start): 'VHE', 'nested (NV2)',
    'nVHE', 'hVHE', 'protected' or 'protected (hVHE)'. Since 6.x the message is
    "%s%sVHE%s mode" (Protected/Hyp, n/h, +NV2, arch/arm64/kvm/arm.c); 5.10 says "Hyp mode"
    for nVHE."""
    for line in kvm_log:
        match = _KVM_INIT.search(line)
        if not match:
            continue
        who, letter, nv2 = match.groups()
        if "VHE" not in match.group(0):
            return "nVHE"  # 5.10's "Hyp mode"
        if nv2:
            return "nested (NV2)"
        if who == "Protected":
            return "protected" if letter != "h" else "protected (hVHE)"
        if letter or who == "Hyp":
            return f"{letter or 'n'}VHE"
        return "VHE"
    return ""


def ipa_limit(kvm_log: list[str]) -> int | None:
    """KVM's IPA size limit in bits ("kvm [1]: IPA Size Limit: 48 bits"), None if not said.
    A nested lab's shadow stage-2s span it whole (qemu.CPU_DEFAULTS)."""
    for line in kvm_log:
        match = re.search(r"IPA Size Limit: (\d+) bits", line)
        if match:
            return int(match.group(1))
    return None


class KvmModeUnavailable(UserError):
    """This kernel or this L0 cannot give the KVM mode asked for (a matrix skips it)."""


#: What a lab.kvm_mode needs: (the L1 kernel, the L0 QEMU) as (major, minor), and why.
KVM_MODE_NEEDS = {
    "nested": ((6, 16), (9, 0), "guest hypervisors came to arm64 KVM in Linux 6.16 and need FEAT_NV2, "
                                "which QEMU emulates under TCG from 9.0"),
}


def kvm_mode_refusal(mode: str, release: str | None, l0_version_line: str | None) -> str:
    """Why this kernel (its release) or this L0 (`--version`'s first line) cannot give
    `mode` ('' if they can, or if a version is not known: KVM's own report decides then)."""
    if mode not in KVM_MODE_NEEDS:
        return ""
    kernel_min, l0_min, why = KVM_MODE_NEEDS[mode]
    if release:
        have = version_tuple(release)[:2]
        if len(have) == 2 and have < kernel_min:
            return (f"lab.kvm_mode {mode}: L1's kernel is {release}, older than "
                    f"{'.'.join(map(str, kernel_min))} ({why}); use --kernel sid or a newer Image")
    l0 = qemu.l0_version(l0_version_line or "")
    if l0 is not None and l0 < l0_min:
        return (f"lab.kvm_mode {mode}: the L0 is QEMU {l0[0]}.{l0[1]}, older than "
                f"{'.'.join(map(str, l0_min))} ({why}); scripts/setup installs QEMU 10 on Debian 12, "
                "or set qemu.binary")
    return ""


#: What KVM reports for each lab.kvm_mode.
KVM_MODE_REPORTS = {"vhe": ("VHE",), "nvhe": ("nVHE", "hVHE"), "protected": ("protected", "protected (hVHE)"),
                    "nested": ("nested (NV2)",)}


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


def ready_complete(text: str) -> bool:
    """Whether L1's ready report is whole: its line end=1 is there (the agent appends more
    lines later, share_uptime= once its share is mounted)."""
    return "end=1" in text.splitlines()


def _ready_written(paths: LabPaths) -> bool:
    try:
        return ready_complete(_read_ready(paths))
    except FileNotFoundError:
        return False


def wait_ready(paths: LabPaths, l0: L0Process, config: LabConfig, started: float) -> ReadyInfo:
    """Waits for L1's ready file; QEMU gone, a fatal console line or the boot timeout ends
    the wait with a LaunchError that carries QEMU's and the console's last lines."""
    deadline = started + config.boot_timeout
    checked_console = 0.0
    private = False
    # Woken when L1 writes in the share's .kvmlab (the ready file, or anything else) or QEMU
    # ends, and at least every 0.1 s for the console and the sockets (lab/core/watch.py).
    with Waker(paths.ready.parent, l0.pid) as waker:
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
            waker.wait(0.1)
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
    if info.kvm_mode not in KVM_MODE_REPORTS[config.kvm_mode]:
        raise KvmModeUnavailable(f"lab.kvm_mode {config.kvm_mode}: L1's KVM came up in {info.kvm_mode} mode instead "
                        f"(kernel {info.release}, {qemu.qemu_version(l0.command[0])}): this kernel or this L0 "
                        f"cannot give {config.kvm_mode}; KVM said: {' / '.join(info.kvm_log[-3:])}")
    return info
