"""Where scenarios are found: the suites under configs/suites/, a user's files or
directories, filtered by a keyword (`-k`, as pytest's)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from lab.core.errors import UserError
from lab.core.paths import SUITES_DIR
from lab.scenarios.model import Scenario, load


def suites() -> dict[str, Path]:
    """The suites: the directories under configs/suites/ (each a directory of scenario files)."""
    return {p.name: p for p in sorted(SUITES_DIR.iterdir()) if p.is_dir() and any(p.glob("*.yaml"))}


def resolve(targets: list[str], keyword: str | None = None) -> list[Scenario]:
    """Suite names, scenario files or directories -> scenarios (each loaded and checked),
    filtered by `keyword` (a substring or glob of the name)."""
    known = suites()
    files: list[Path] = []
    for target in targets or ["thp"]:
        path = Path(target).expanduser()
        if target in known:
            files += sorted(known[target].glob("*.yaml"))
        elif path.is_dir():
            files += sorted(path.glob("*.yaml"))
        elif path.suffix in (".yaml", ".yml"):
            files.append(path)
        else:
            raise UserError(f"{target}: not a suite ({', '.join(known) or 'none'}), a scenario file or a directory "
                            "of them; `kvmlab test --list` shows what there is")
    scenarios = [load(f) for f in files]
    names: dict[str, Path | None] = {}
    for s in scenarios:
        if s.name in names:
            raise UserError(f"{s.path}: name {s.name!r} is also the name of {names[s.name]}; names must be unique")
        names[s.name] = s.path
    if keyword:
        pattern = keyword if any(ch in keyword for ch in "*?[") else f"*{keyword}*"
        scenarios = [s for s in scenarios if fnmatch.fnmatch(s.name, pattern)]
        if not scenarios:
            raise UserError(f"-k {keyword}: no scenario matches; `kvmlab test --list` shows the names")
    return scenarios
