"""Reading what a lab wrote: the L1 console log and QEMU's own output, for reports."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from lab.machine.qemu import LabPaths

_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: What L1's start-up prints when a step fails (images/l1/initramfs/init, kvmlab/agent),
#: and a panic's line: the console lines that say why L1 stopped.
FAILED_STEP = r"kvmlab-(?:initramfs|agent): FAILED"
PANIC_LINE = r"Kernel panic - not syncing:[^\n]*"
_WHY_STOPPED = re.compile(rf"{FAILED_STEP}[^\n]*|{PANIC_LINE}")


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log, without terminal escapes (a console carries the
    shell's terminal queries, ESC [ 6 n: not for a report)."""
    try:
        data = path.read_bytes()[-64 * 1024:]
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    text = _CONTROL.sub("", _ESCAPES.sub("", text))
    return "\n".join(text.splitlines()[-lines:])


def why_stopped(console_log: Path) -> str:
    """The console's last line that says why L1 stopped ('' if none does): for a lab found
    down, such as one whose agent could not mount the share after `up` had returned."""
    found = _WHY_STOPPED.findall(tail(console_log, 200))
    return found[-1].strip() if found else ""


def read_from(path: Path, offset: int) -> str:
    """What a log gained since `offset` (its size when a step began)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").replace("\r", "")
    except OSError:
        return ""


def size_of(path: Path) -> int:
    """A log's size now: the `offset` to read from later."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def detail(paths: LabPaths, qemu_output: bool = False) -> str:
    """What a failed boot or restore shows: QEMU's last words, the console's last lines."""
    parts = []
    if qemu_output:
        out = tail(paths.qemu_log, 15)
        parts.append("QEMU said:\n" + (out or "(nothing)"))
    console = tail(paths.console_log, 25)
    parts.append(f"last lines of the L1 console ({paths.console_log}):\n" + (console or "(empty)"))
    return "\n".join(parts)


def signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "?"
