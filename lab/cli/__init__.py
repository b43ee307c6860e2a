"""The `kvmlab` command: a thin layer over lab.machine.Lab, lab.scenarios, lab.orchestrate
and lab.builder. Each module registers its commands on the group in base.py.

Exit status: 0 done; 1 the lab failed (or the command run in L1 failed, for `exec`: its
own status); 2 bad input (a config key, a value, a path); 130 interrupted.
"""

from lab.cli.base import main, run  # each command's module is imported when it runs (base.COMMANDS)

__all__ = ["main", "run"]
