"""`python -m lab.cli`: the same as the `kvmlab` command."""

from lab.cli import run

run()
