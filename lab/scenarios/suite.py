"""Running a suite on a lab into a fresh results directory; what is printed as it goes is
the caller's (lab/results/console.py renders it)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from lab.builder.build import Builder
from lab.core.progress import Progress
from lab.machine.lab import Lab
from lab.scenarios.jobs import l2_kernel
from lab.scenarios.model import Scenario
from lab.scenarios.result import ScenarioResult
from lab.scenarios.runner import Runner, Spread


def results_dir(base: str | None, label: str) -> Path:
    """A new directory under `base` ($KVMLAB_RESULTS, else ./kvmlab-results): STAMP-LABEL."""
    root = Path(base or os.environ.get("KVMLAB_RESULTS") or "kvmlab-results").expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{label}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{label}-{n}"
    return path


def label_of(targets: tuple[str, ...] | list[str]) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", "-".join(Path(t).stem for t in targets) or "thp")[:40]


def run_suite(lab: Lab, scenarios: list[Scenario], targets: tuple[str, ...] | list[str], out: Path,
              progress: Progress, on_result: Callable[[ScenarioResult], None] | None = None,
              spread: Spread | None = None, count: int = 1, shard: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs `scenarios` on `lab` (or as `spread` shares them out) into `out`, with a
    progress bar; `on_result` sees each result as it comes; each scenario `count` times,
    judged as one (FLAKY if it passed in some runs only). Returns the summary."""
    l2_kernel(Builder(progress=progress), lab.require_up()["config"].get("images", {}), scenarios)
    with progress.bar(f"{label_of(targets)} on {lab.name}", len(scenarios)) as bar:
        def result(r: ScenarioResult) -> None:
            bar.advance()
            if on_result is not None:
                on_result(r)

        runner = Runner(lab, out, on_result=result, on_start=lambda s: bar.start(s.name), progress=progress,
                        targets=[Path(t).stem if t.endswith((".yaml", ".yml")) else t for t in targets], count=count,
                        shard=shard)
        return runner.run(scenarios, spread)
