"""`--shard K/N`: a deterministic share of a suite's scenarios, balanced by the durations
kept in configs/suites/durations.json (refreshed by scripts/bench), so that N CI runners
given the same suite and the same file each run a different share and together run every
scenario exactly once.

The split is longest-first: scenarios in order of their recorded seconds (longest first,
then by name), each to the shard with the least time so far (the lowest K on a tie). A
scenario with no recorded time counts as the median of the recorded ones. Each shard keeps
the suite's order.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from lab.core.errors import UserError
from lab.core.paths import SUITES_DIR

DURATIONS = SUITES_DIR / "durations.json"
_SPEC = re.compile(r"^(\d{1,3})/(\d{1,3})$")


def parse(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); UserError naming the value otherwise."""
    match = _SPEC.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UserError(f"--shard {text}: write K/N with 1 <= K <= N, e.g. --shard 2/4")
    return int(match.group(1)), int(match.group(2))


def durations(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per scenario name as recorded ({} if the file is missing); a bad file is a
    UserError naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a durations file ({exc}); `git checkout` it or rerun scripts/bench") from None
    seconds = data.get("seconds") if isinstance(data, dict) else None
    if not isinstance(seconds, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in seconds.items()):
        raise UserError(f"{path}: 'seconds' must map scenario names to seconds; rerun scripts/bench")
    return {k: float(v) for k, v in seconds.items()}


def split(names: list[str], n: int, seconds: dict[str, float]) -> list[list[str]]:
    """`names` in `n` shards (each in the order of `names`), balanced by `seconds`."""
    known = [seconds[name] for name in names if name in seconds]
    default = statistics.median(known) if known else 1.0
    cost = {name: seconds.get(name, default) for name in names}
    load = [0.0] * n
    owner: dict[str, int] = {}
    for name in sorted(names, key=lambda x: (-cost[x], x)):
        k = min(range(n), key=lambda i: (load[i], i))
        owner[name] = k
        load[k] += cost[name]
    return [[name for name in names if owner[name] == k] for k in range(n)]


def share(names: list[str], k: int, n: int, seconds: dict[str, float] | None = None) -> list[str]:
    """Shard `k` (1-based) of `n`."""
    return split(names, n, durations() if seconds is None else seconds)[k - 1]
