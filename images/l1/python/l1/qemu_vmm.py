"""L1's arm64 QEMU as the VMM (-accel kvm -cpu host): the realistic one.

Its guest RAM comes from a memory backend (ram, memfd, or a file on hugetlbfs), optionally
preallocated. The guest's serial port is QEMU's stdio: this driver reads it, and when the
touch payload prints "kvmlab-touch: pause" it does the scenario's actions for that pause
through QEMU's own QMP socket (e.g. a migration, which turns dirty logging on), writes
"kvmlab: phase N" to trace_marker and answers the guest with one byte.

The L2 Linux guest (kind: linux) is a tinyconfig kernel (lab/builder/l2kernel.py) with a
busybox initramfs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

from lab.shared import codec
from lab.shared.contract import Action, QemuJob, VmmOutcome
from lab.shared.files import replacing
from lab.shared.units import MiB

from .probe import marker

QEMU = "qemu-system-aarch64"


class Qmp:
    """Just enough QMP (stdlib only: L1 has no qemu.qmp)."""

    def __init__(self, path: str, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name: str, **args: Any) -> Any:
        message = {"execute": name, "arguments": args} if args else {"execute": name}
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def command(spec: QemuJob, qmp_path: str, console_log: str) -> list[str]:
    mib = spec.memory // MiB
    props = [f"memory-backend-{spec.backend}", "id=mem0", f"size={mib}M"]
    if spec.backend == "file":
        props += ["mem-path=/dev/hugepages", "share=on"]
    if spec.prealloc:
        props.append("prealloc=on")
    cmd = [QEMU, "-M", "virt,gic-version=3", "-accel", "kvm", "-cpu", "host", "-smp", str(spec.smp),
           "-m", f"{mib}M", "-object", ",".join(props), "-machine", "memory-backend=mem0",
           "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-chardev", f"stdio,id=ser,signal=off,logfile={console_log}", "-serial", "chardev:ser",
           "-qmp", f"unix:{qmp_path},server=on,wait=off",
           "-kernel", spec.kernel]
    if spec.initrd:
        cmd += ["-initrd", spec.initrd]
    if spec.append:
        cmd += ["-append", spec.append]
    return cmd


def local_copy(path: str) -> str:
    """The L2 kernel, copied once per L1 boot from the share (9p, ~13 MB/s) to /run."""
    local = "/run/kvmlab/l2-" + os.path.basename(path)
    size = os.stat(path).st_size
    if not os.path.exists(local) or os.stat(local).st_size != size:
        with replacing(local) as tmp:
            shutil.copyfile(path, tmp)
    return local


def start(spec: QemuJob, out_dir: str) -> tuple[int, dict[str, Any]]:
    os.makedirs("/run/kvmlab", exist_ok=True)
    if spec.initrd:  # an L2 Linux: its kernel is the same for every scenario
        spec = codec.replace(spec, kernel=local_copy(spec.kernel))
    qmp_path = f"/run/kvmlab/l2-{os.getpid()}.qmp"
    cmd = command(spec, qmp_path, os.path.join(out_dir, "l2-console.log"))
    with open(os.path.join(out_dir, "l2-command"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    stderr = open(os.path.join(out_dir, "qemu-l2.log"), "wb")
    # QEMU runs with glibc's own malloc settings, not the probe's (lab/scenarios/staging.py VMM_MALLOC)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
    return proc.pid, {"proc": proc, "qmp_path": qmp_path, "out_dir": out_dir}


def _action(qmp: Qmp, action: Action) -> dict[str, Any]:
    what = action.do
    if what == "migrate":
        # Slow on purpose: the migration (and its dirty logging) lasts while the guest runs.
        qmp.cmd("migrate-set-parameters", **{"max-bandwidth": action.bandwidth})
        qmp.cmd("migrate", uri=f"exec:cat > /run/kvmlab/migration-{os.getpid()}")
        deadline = time.monotonic() + 10
        while True:  # dirty logging is on once the migration leaves "setup"
            status = qmp.cmd("query-migrate").get("status")
            if status != "setup" or time.monotonic() > deadline:
                return {"migration": status}
            time.sleep(0.02)
    if what == "dirty_rate":
        seconds = int(action.seconds if action.seconds is not None else 10)
        qmp.cmd("calc-dirty-rate", **{"calc-time": seconds, "mode": "dirty-bitmap"})
        time.sleep(0.3)
        return {"dirty_rate": qmp.cmd("query-dirty-rate").get("status")}
    if what == "sleep":
        time.sleep(action.seconds if action.seconds is not None else 1)
        return {}
    raise ValueError(f"action {what!r} is for the probe VMM, not QEMU")


def drive(extra: dict[str, Any], spec: QemuJob, kill_after: float | None) -> VmmOutcome:
    """Starts the serial reader; returns at once (scenario.wait_vmm waits for the process)."""
    proc = extra["proc"]
    outcome: VmmOutcome = {"pauses": 0, "actions": []}

    def reader() -> None:
        seen = b""
        qmp = None
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                while b"kvmlab-touch: pause\n" in seen:
                    seen = seen.split(b"kvmlab-touch: pause\n", 1)[1]
                    outcome["pauses"] += 1
                    n = outcome["pauses"]
                    marker(f"kvmlab: pause {n}")
                    qmp = qmp or Qmp(extra["qmp_path"])
                    for action in spec.actions:
                        if action.at == f"pause {n}":
                            outcome["actions"].append({"do": action.do, **_action(qmp, action)})
                    marker(f"kvmlab: phase {n}")
                    proc.stdin.write(b"g")
                    proc.stdin.flush()
                seen = seen[-64:]
        except Exception as exc:  # reported with the scenario
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if qmp:
                qmp.close()

    threading.Thread(target=reader, daemon=True).start()
    return outcome
