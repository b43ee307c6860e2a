"""The errors kvmlab raises, and the exit status each one gives on the command line.

- UserError (exit 2): the input is wrong (a config key, a value, a path). Nothing was done.
- LabError (exit 1): the lab itself failed (QEMU died, L1 did not boot, a command timed out).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class KvmlabError(Exception):
    exit_status = 1

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.message = message
        #: Extra lines shown under the message (a console tail, QEMU's own output).
        self.detail = detail


class UserError(KvmlabError):
    """Bad input: one line saying what, where and what to do."""

    exit_status = 2

    def __init__(self, message: str, detail: str = ""):
        # One line whatever the input held: a key or value with a newline or another
        # control character in it is shown escaped ("\\n"), as in a Python string.
        super().__init__(_CONTROL.sub(lambda m: repr(m.group(0))[1:-1], message), detail)


class ConfigError(UserError):
    pass


class LabError(KvmlabError):
    """The lab failed at something it was asked to do."""


class ImageError(LabError):
    """An image could not be built."""


class LaunchError(LabError):
    """QEMU did not start or L1 did not become ready."""

    def __init__(self, message: str, *, command: list[str] | None = None, exit_code: int | None = None,
                 detail: str = ""):
        super().__init__(message, detail)
        self.command = command or []
        self.exit_code = exit_code


class LabBusy(LabError):
    """The lab is already up (or being brought up) under that name."""
