"""The `kvmlab` command: a thin layer over lab.machine.Lab, lab.scenarios, lab.orchestrate
and lab.builder. Each module registers its commands on the group in base.py.

Exit status: 0 done; 1 the lab failed (or the command run in L1 failed, for `exec`: its
own status); 2 bad input (a config key, a value, a path); 130 interrupted.
"""

from lab.cli import image_cmds, kernel_cmds, lab_cmds, run_cmds, selftests_cmds  # noqa: F401 - they register the commands
from lab.cli.base import main

__all__ = ["main"]
