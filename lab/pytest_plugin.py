"""kvmlab's pytest plugin (entry point `pytest11`, name `kvmlab`): write your own stage-2
experiments as pytest tests.

    def test_thp_backs_the_slot_with_blocks(kvm_lab):
        result = kvm_lab.run({
            "name": "my-anon-64m", "l1": {"thp": "always"},
            "memslots": [{"ipa": "1G", "size": "64M", "backing": "anonymous"}],
            "guest": {"access": "write"},
        })
        assert result.regions.blocks == 32

`kvm_lab` is session-scoped: one L1 is brought up for the session and down at its end
(every QEMU reaped, whatever the tests did). A scenario is a dict in the YAML's shape, a
scenario file, a scenario's name from a suite (`"anon-thp-always"`) or a loaded
`Scenario`. Every run's artefacts land in one results directory that
`kvmlab report DIR --html OUT` renders like any `kvmlab test` run.

Options: --kvmlab-kernel KERNEL (as `kvmlab up --kernel`), --kvmlab-config FILE,
--kvmlab-name NAME (default "pytest"), --kvmlab-keep (leave the lab up; the next session
reuses it), --kvmlab-results DIR. A lab of that name that is already up is used as it is
and left up. Nothing is imported from kvmlab until a test asks for `kvm_lab`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from lab.core.status import PASS

if TYPE_CHECKING:
    from lab.builder.build import Tools


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses kvm_lab boots QEMU: it is marked `boot`, so `-m "not boot"` is the
    fast loop without a marker in every such test."""
    for item in items:
        if "kvm_lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.boot)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmlab", "kvmlab: the kvm_lab fixture (an arm64 L1 running KVM under QEMU TCG)")
    group.addoption("--kvmlab-kernel", metavar="KERNEL", default=None,
                    help="L1 kernel: a Debian suite (default trixie), SUITE:VERSION, an ABI, or an arm64 Image")
    group.addoption("--kvmlab-config", metavar="FILE", default=None, help="a kvmlab lab config (YAML)")
    group.addoption("--kvmlab-name", metavar="NAME", default="pytest", help="lab name (default: pytest)")
    group.addoption("--kvmlab-keep", action="store_true", default=False,
                    help="leave the lab up after the session (a later session reuses it)")
    group.addoption("--kvmlab-results", metavar="DIR", default=None,
                    help="where scenario results go (default: under pytest's temporary directory)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boot: boots the real L1 under QEMU (the kvm_lab fixture marks its tests)")
    # A wrong --kvmlab-kernel or --kvmlab-config is a usage error before any test runs.
    if config.getoption("--kvmlab-kernel", None) or config.getoption("--kvmlab-config", None):
        from lab.core.errors import KvmlabError

        try:
            _config(config)
        except KvmlabError as exc:
            raise pytest.UsageError(f"kvmlab: {exc.message}") from None


def _config(config: pytest.Config):
    from lab.config import load_config

    overrides = {"lab.name": config.getoption("--kvmlab-name")}
    if config.getoption("--kvmlab-kernel"):
        overrides["lab.kernel"] = config.getoption("--kvmlab-kernel")
    return load_config(config.getoption("--kvmlab-config"), overrides)


class Regions(list):
    """The 2 MiB regions a scenario's guest touched, each a dict with start, mapping,
    faults, pages and kinds (fault kind and level -> count)."""

    def count(self, mapping: str) -> int:  # type: ignore[override,unused-ignore]
        return sum(1 for r in self if r["mapping"] == mapping)

    @property
    def blocks(self) -> int:
        """Regions mapped with a 2 MiB stage-2 block."""
        return self.count("block")

    @property
    def pages(self) -> int:
        """Regions mapped with 4 KiB pages."""
        return self.count("page")

    @property
    def split(self) -> int:
        """Regions mapped as a block first, then split into pages (dirty logging)."""
        return self.count("split")

    @property
    def untouched(self) -> int:
        return self.count("untouched")

    @property
    def faults(self) -> int:
        return sum(r["faults"] for r in self)

    def mappings(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self:
            out[r["mapping"]] = out.get(r["mapping"], 0) + 1
        return out


@dataclasses.dataclass
class ScenarioOutcome:
    """What one scenario measured and how kvmlab judged it."""
    name: str
    status: str  # pass, fail, error or skip
    observed: str
    faults: int
    reasons: list[str]
    checks: list[dict[str, Any]]
    regions: Regions
    artefacts: Path
    release: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def __str__(self) -> str:
        return f"{self.name}: {self.status} on {self.release}: {self.observed or '-'}; " + "; ".join(self.reasons)


class KvmLab:
    """A running lab and a runner of scenarios on it (the `kvm_lab` fixture)."""

    def __init__(self, lab, results: Path):
        from lab.scenarios.runner import Runner

        self.lab = lab
        self.name = lab.name
        self.runner = Runner(lab, results, targets=["pytest"])
        self.results = results
        self.release = self.runner.release
        self._tools: Tools | None = None
        self._started = time.monotonic()

    def scenario(self, spec: Any):
        """A Scenario from a dict (the YAML's shape), a file, a suite scenario's name, or a Scenario."""
        from lab.core.errors import UserError
        from lab.scenarios import model, suites

        if isinstance(spec, model.Scenario):
            return spec
        if isinstance(spec, dict):
            return model.parse(spec, f"<scenario {spec.get('name', 'from Python')}>")
        path = Path(str(spec))
        if path.suffix in (".yaml", ".yml"):
            return model.load(path)
        for suite in suites.suites().values():
            if (suite / f"{spec}.yaml").exists():
                return model.load(suite / f"{spec}.yaml")
        raise UserError(f"{spec}: not a scenario name in any suite ({', '.join(suites.suites())}), "
                        "nor a .yaml file; `kvmlab test --list` shows the names")

    def run(self, spec: Any, **overrides: Any) -> ScenarioOutcome:
        """Runs one scenario in L1 and returns its outcome (regions, verdict, evidence).
        `overrides` replace Scenario fields, e.g. timeout=120."""
        scenario = self.scenario(spec)
        done = {s["name"] for s in self.runner.summary["scenarios"]}
        name, n = scenario.name, 1
        while name in done:  # the same scenario twice in a session keeps both runs
            n += 1
            name = f"{scenario.name}-{n}"
        scenario = dataclasses.replace(scenario, name=name, **overrides)
        if self._tools is None:
            self.results.mkdir(parents=True, exist_ok=True)
            self._tools = self.runner.sync_tools()
        result = self.runner.run_one(scenario, self._tools)
        self.runner.summary["scenarios"].append(result.as_dict())
        self.runner.save_summary(time.monotonic() - self._started)
        regions: list[dict[str, Any]] = []
        verdict = Path(result.artefacts) / "verdict.json"
        if verdict.exists():
            data = json.loads(verdict.read_text())
            regions = data.get("regions") or [r for m in data.get("maps", []) for r in m.get("regions", [])]
        return ScenarioOutcome(result.name, result.status, result.observed, result.faults, result.reasons,
                               result.checks, Regions(regions), Path(result.artefacts), self.release)

    def close(self) -> None:
        """Keeps L1's console log with the session's results (before the lab goes down)."""
        import shutil

        if self.runner.summary["scenarios"]:
            try:
                shutil.copyfile(self.lab.paths.console_log, self.results / "l1-console.log")
            except OSError:
                pass

    def exec(self, command: list[str] | str, timeout: float | None = 60) -> tuple[int, str]:
        """Runs a command in L1; (exit status, output)."""
        return self.lab.run(command, timeout=timeout)


@pytest.fixture(scope="session")
def kvm_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvmLab]:
    """An arm64 L1 running KVM (kvmlab), up for the whole session; `.run(scenario)` measures
    stage-2 mappings. See `--kvmlab-*` options."""
    from lab.core.errors import KvmlabError
    from lab.core.progress import Progress
    from lab.machine.lab import Lab

    opt = request.config.getoption
    try:
        config = _config(request.config)
    except KvmlabError as exc:
        pytest.fail(f"kvmlab: {exc.message}", pytrace=False)
    lab = Lab(config.name, Progress(stream=sys.stderr))  # captured by pytest; shown with -s or on failure
    started_here = False
    try:
        if lab.is_up():
            running = ((lab.state() or {}).get("config", {}).get("lab", {}) or {}).get("kernel")
            if opt("--kvmlab-kernel") and running != config.kernel:
                pytest.fail(f"kvmlab: lab {config.name!r} is up with kernel {running}, not {config.kernel}; "
                            f"`kvmlab down --name {config.name}` or pick --kvmlab-name", pytrace=False)
        else:
            lab.up(config)
            started_here = True
        results = Path(opt("--kvmlab-results")) if opt("--kvmlab-results") else \
            tmp_path_factory.mktemp("kvmlab-results")
        session = KvmLab(lab, results / time.strftime("%Y%m%d-%H%M%S-pytest"))
        yield session
        session.close()
    except KvmlabError as exc:
        pytest.fail(f"kvmlab: {exc.message}" + (f"\n{exc.detail}" if exc.detail else ""), pytrace=False)
    finally:
        if started_here and not opt("--kvmlab-keep") and lab.is_up():
            lab.down()
