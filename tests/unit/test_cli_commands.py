"""The `kvmlab` group imports a command's module only when that command runs."""

import subprocess
import sys

CHECK = """
import sys
import lab.cli.base as base
import click
ctx = click.Context(base.main)
assert base.main.get_command(ctx, "up") is not None
loaded = sorted(m for m in sys.modules if m.startswith("lab.cli."))
listed = base.main.list_commands(ctx)
print(loaded)
print(sorted(listed))
print(sorted(base.COMMANDS))
print(all(base.main.get_command(ctx, name) is not None for name in base.COMMANDS))
"""


def test_up_loads_only_its_module_and_every_command_is_where_the_map_says():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    loaded, listed, mapped, found = result.stdout.splitlines()
    assert loaded == "['lab.cli.base', 'lab.cli.lab_cmds']"
    assert listed == mapped  # the map names every command there is, and no other
    assert found == "True"
