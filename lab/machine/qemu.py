"""L0: the qemu-system-aarch64 process that runs L1 under TCG with EL2 (virtualization=on).

`build_command` is a pure function of the config and the paths (unit-tested); `L0Process`
owns one running QEMU: start, wait, stop, and always reap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.core.errors import LaunchError, UserError
from lab.core.procs import signals_held
from lab.shared.files import write_atomic

if TYPE_CHECKING:  # not imported at run time: `kvmlab up` starts QEMU before it reads YAML (prestart.py)
    from lab.config import LabConfig


@dataclass(frozen=True)
class LabPaths:
    """Everything one lab keeps, in one private directory."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def state(self) -> Path:
        return self.dir / "lab.json"

    @property
    def share(self) -> Path:
        return self.dir / "share"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.cpio"

    @property
    def ready(self) -> Path:
        return self.share / ".kvmlab" / "ready"

    def sockets(self) -> list[Path]:
        return [self.qmp, self.console, self.agent]


def kernel_cmdline(config: LabConfig) -> str:
    parts = ["console=ttyAMA0", "panic=-1", f"transparent_hugepage={config.thp}"]
    if config.hugepages_1g:  # gigantic pages: only at boot can L1 count on 1 GiB of contiguous memory
        parts.append(f"hugepagesz=1G hugepages={config.hugepages_1g}")
    if config.kvm_mode != "vhe":
        parts.append(f"kvm-arm.mode={config.kvm_mode}")
    if config.append:
        parts.append(config.append)
    return " ".join(parts)


#: L1's KVM walks the whole IPA space in 1 GiB steps (stage2_apply_range, and from 7.x
#: stage2_destroy_range when a VM is freed), and its IPA limit follows the CPU: `-cpu max`
#: has FEAT_LPA2, so a 4K L1 kernel takes 52 bits, 4M steps per walk. Measured under TCG:
#: - on 7.2 (sid), every VM's teardown took 4-5 s, empty or not: QEMU in L1 frees a
#:   scratch VM of the largest IPA size at each start (start and quit took 7-9 s, 1.1 s
#:   with 48 bits), 10 s of each QEMU-as-VMM scenario; 6.12 frees in one walk (1.1 s);
#: - under kvm-arm.mode=nested, each shadow stage-2 has the host's limit (7.2's
#:   kvm_get_pa_bits() returns kvm_ipa_limit), and each MMU-notifier invalidation
#:   (kvm_nested_s2_unmap), dirty-log write-protect (kvm_nested_s2_wp) and TLBI VMALLS12E1
#:   of the guest hypervisor (handle_vmalls12e1is) covers it whole: one MADV_DONTNEED,
#:   four vCPUs and the exit_mmap race stalled L1 for minutes.
#: Without LPA2, kvm_set_ipa_limit() caps the limit at 48 bits (16 times fewer steps;
#: also what most arm64 servers have): so a lab's `max` CPU gets lpa2=off unless qemu.cpu
#: names lpa2 (`qemu.cpu: max,pauth-impdef=on,lpa2=on`: configs/lpa2.yaml).
CPU_DEFAULTS = ("lpa2=off",)


def l0_cpu(config: LabConfig) -> str:
    """The -cpu L0 gets: qemu.cpu, with CPU_DEFAULTS added on the `max` model (each only
    where qemu.cpu does not set that property itself)."""
    parts = config.qemu_cpu.split(",")
    if parts[0] != "max":
        return config.qemu_cpu
    given = {p.split("=", 1)[0] for p in parts[1:]}
    return ",".join(parts + [d for d in CPU_DEFAULTS if d.split("=", 1)[0] not in given])


def numa_args(config: LabConfig) -> list[str]:
    """lab.numa_nodes: 2 splits L1's memory (and CPUs) into two NUMA nodes; 1 adds nothing."""
    if config.numa_nodes < 2:
        return []
    total, cpus = config.machine_mib, config.cpus
    sizes = [total // 2 + total % 2, total // 2]
    args: list[str] = []
    for node, size in enumerate(sizes):
        first, last = (0, (cpus - 1) // 2) if node == 0 else ((cpus + 1) // 2, cpus - 1)
        args += ["-object", f"memory-backend-ram,id=node{node},size={size}M",
                 "-numa", f"node,nodeid={node},memdev=node{node}" + (f",cpus={first}-{last}" if first <= last else "")]
    return args


def build_command(config: LabConfig, paths: LabPaths, kernel: Path, rootfs: Path,
                  qemu_binary: str | None = None) -> list[str]:
    """The L0 command line. Sockets are unix sockets in the lab directory: nothing listens
    on a network port."""
    def chardev_socket(name: str, path: Path, extra: str = "") -> list[str]:
        return ["-chardev", f"socket,id={name},path={path},server=on,wait=off{extra}"]

    return [
        qemu_binary or config.qemu_binary,
        "-name", f"kvmlab-{config.name}",
        "-M", "virt,virtualization=on,gic-version=3",
        "-cpu", l0_cpu(config),
        "-smp", str(config.cpus),
        "-m", f"{config.machine_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(paths.initrd),
        "-append", kernel_cmdline(config),
        # ttyAMA0: the kernel's console and `kvmlab console`; every byte kept in console.log.
        *chardev_socket("console", paths.console, f",logfile={paths.console_log},logappend=on"),
        "-serial", "chardev:console",
        *chardev_socket("qmp", paths.qmp),
        "-mon", "chardev=qmp,mode=control",
        # hvc0: the agent shell behind `kvmlab exec`.
        "-device", "virtio-serial-pci,id=vser0",
        *chardev_socket("agent", paths.agent),
        "-device", "virtconsole,chardev=agent,name=kvmlab.agent",
        # The port kvmlab.ready: what L1's agent reports once ready (and once its share is
        # mounted, after), appended by QEMU to the share's .kvmlab/ready, which the host
        # watches; so L1 is ready before its share's modules are in.
        "-chardev", f"file,id=ready,path={str(paths.ready).replace(',', ',,')},append=on",
        "-device", "virtserialport,chardev=ready,name=kvmlab.ready",
        # L1's root: the image's squashfs, read-only (a disk migrates; a mounted 9p export
        # would block snapshots). The share: bulk files both ways.
        "-drive", f"file={str(rootfs).replace(',', ',,')},if=none,id=root,format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=root",
        # The share is untrusted (L1 runs the kernel under test as root): mapped-file keeps
        # what L1 sets (owner, mode, file type) in .virtfs_metadata files, so a symlink, a
        # device node or a setuid file made in L1 is an ordinary 0600 file on the host.
        # Not mapped-xattr: tmpfs before Linux 6.6 has no user xattrs.
        "-fsdev", f"local,id=share,path={paths.share},security_model=mapped-file",
        "-device", "virtio-9p-pci,fsdev=share,mount_tag=share",
        *numa_args(config),
        # Device memory (lab.device_memory): a PCI BAR, for memslots KVM maps as VM_PFNMAP.
        *(["-object", f"memory-backend-ram,id=devmem,size={config.device_memory_mib}M",
           "-device", "ivshmem-plain,memdev=devmem,master=on"] if config.device_memory_mib else []),
        "-pidfile", str(paths.pidfile),
        # The one network listener kvmlab opens, only when asked: gdb on L1's kernel, loopback only.
        *(["-gdb", f"tcp:127.0.0.1:{config.gdb}"] if config.gdb else []),
        # One host thread for every vCPU (qemu.tcg_threads); QEMU's default is one each.
        *(["-accel", "tcg,thread=single"] if config.tcg_threads == "single" else []),
        *config.qemu_extra_args,
    ]


def find_qemu(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise UserError(f"{binary}: not found (config key qemu.binary); run scripts/setup "
                        "or apt-get install qemu-system-arm")
    return path


def qemu_version(binary: str) -> str:
    """`qemu-system-aarch64 --version`'s first line, remembered per binary (path, size,
    mtime): asking costs a process start, on a host whose cores are busy booting L1."""
    from lab.core.paths import cache_dir

    try:
        st = os.stat(binary)
    except OSError:
        return "unknown"
    key = f"{os.path.realpath(binary)}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache_dir() / "qemu-versions.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    version = out.splitlines()[0].strip() if out else "unknown"
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(memo, json.dumps({**known, key: version}))
    except OSError:
        pass
    return version


#: What an L0 QEMU older than a version does not give L1: FEAT_NV and FEAT_NV2 for
#: `-cpu max` under TCG, and the virt board's EL2 virtual timer interrupt (QEMU commit
#: "hw/arm/virt: Wire up non-secure EL2 virtual timer IRQ"; without it a VHE L1 of Linux
#: 7.x was measured running L2 13x slower, the bench of 2026-12-01 1.1x), both since 9.0.
L0_FEATURES = (((9, 0), "no FEAT_NV2"), ((9, 0), "no EL2 virtual timer"))


def l0_version(version_line: str) -> tuple[int, int] | None:
    """(major, minor) of `qemu-system-aarch64 --version`'s first line, or None."""
    match = re.search(r"version (\d+)\.(\d+)", version_line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def l0_lacks(version_line: str) -> str:
    """One line naming what this L0 lacks, e.g. "QEMU 7.2: no FEAT_NV2, no EL2 virtual timer";
    "" for a QEMU new enough (or one whose version cannot be read)."""
    have = l0_version(version_line)
    if have is None:
        return ""
    lacks = [what for since, what in L0_FEATURES if have < since]
    return f"QEMU {have[0]}.{have[1]}: {', '.join(lacks)}" if lacks else ""


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def pid_is_lab(pid: int, paths: LabPaths) -> bool:
    """`pid` is the QEMU of the lab in `paths` (its command line names the lab's pid file)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"qemu-system" in argv[0] and str(paths.pidfile).encode() in argv


#: QEMUs this process started and left running (`up` from Python or pytest): kept so that
#: whoever stops them later in this process also reaps them (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def wait_pid(pid: int, timeout: float, child: subprocess.Popen | None = None) -> bool:
    """Waits for `pid` to end; reaps it when it is our child. True if it ended."""
    child = child or _CHILDREN.get(pid)
    deadline = time.monotonic() + timeout
    while True:
        if child is not None:
            if child.poll() is not None:
                _CHILDREN.pop(pid, None)
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def kill_pid(pid: int, child: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL; always reaps our own child."""
    child = child or _CHILDREN.get(pid)
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if wait_pid(pid, grace, child):
            break
    if child is not None:
        try:
            child.wait(timeout=5)
            _CHILDREN.pop(pid, None)
        except subprocess.TimeoutExpired:
            pass


class L0Process:
    """One qemu-system-aarch64 started by us."""

    def __init__(self, command: list[str], log: Path):
        self.command = command
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        with open(self.log, "ab", opener=private_opener) as log:
            try:
                # A session of its own: Ctrl-C in the user's terminal reaches kvmlab, which
                # then stops QEMU itself, rather than killing QEMU behind its back; so Ctrl-C
                # waits until its pid is kept here (signals_held), or nobody would stop it.
                # umask 077: the sockets, console log and pid file QEMU creates are the user's alone.
                with signals_held():
                    self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
            except OSError as exc:
                raise LaunchError(f"cannot start {self.command[0]}: {exc.strerror}", command=self.command) from None
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_pid(self.proc.pid, self.proc)

    def detach(self) -> None:
        """Leaves QEMU running: the lab is up. Whoever stops it in this process reaps it."""
        if self.proc is not None:
            _CHILDREN[self.proc.pid] = self.proc
            self.proc = None


def private_opener(path: str, flags: int) -> int:
    """open()'s opener for files in a lab directory: the user's alone (0600)."""
    return os.open(path, flags, 0o600)
