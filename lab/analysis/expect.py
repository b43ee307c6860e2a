"""What a verdict is judged against, as analysis sees it: plain data and the shape of a
scenario, with nothing of how scenarios are written or run (lab/scenarios/ fills these in;
analysis never imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lab.shared.actions import Action


@dataclass
class RegionExpectation:
    """How the touched 2 MiB regions (or those in `start`, `size`) must be mapped."""

    mapping: str | None = None
    start: int | None = None
    size: int | None = None
    phase: int | None = None
    faults: tuple[int, int] | None = None
    kernels: str | None = None
    #: L0 QEMU versions this expectation holds under (e.g. ">=9.0"), for behaviour that
    #: depends on what L0 emulates; the description says why
    qemu: str | None = None

    def describe(self) -> str:
        text = self.mapping or "any"
        if self.faults == (0, 0):
            text = "no fault"
        elif self.faults:
            lo, hi = self.faults
            text += f" ({lo if lo == hi else f'{lo}-{hi}'}/region)"
        if self.phase is not None:
            text = f"phase {self.phase}: {text}"
        if self.kernels:
            text += f" on {self.kernels}"
        if self.qemu:
            text += f" under QEMU {self.qemu}"
        return text


class GuestShape(Protocol):
    """Where the guest touched memory, and how."""

    base: int
    size: int
    stride: int
    passes: list[str]


class Judged(Protocol):
    """The parts of a scenario a verdict reads (lab.scenarios.model.Scenario has them)."""

    name: str
    regions: list[RegionExpectation]
    total_faults: tuple[int, int] | None
    folios: dict[int, tuple[int, int]]
    #: the VMM actions (lab.shared.actions.Action: `do`, `at`)
    actions: list[Action]
    fault_ratio: float | None
    compare_thp: list[str]
    clean_log: bool
    kill_after: float | None
    repeat: int
    kernels: str | None

    @property
    def guest(self) -> GuestShape: ...

    def smaps_for(self, release: str) -> dict[str, tuple[int, int]]: ...
