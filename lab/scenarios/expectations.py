"""A scenario's `expect:` keys as written, checked: region mappings, smaps values and
folio counts (lab/scenarios/model.py reads the rest of the file)."""

from __future__ import annotations

from typing import Any

from lab.analysis.expect import RegionExpectation
from lab.core import validate as v
from lab.core.validate import Bad, Checker, parse_bytes
from lab.shared.units import KiB

MAPPINGS = ("block", "page", "split", "block-1g")
SMAPS_KEYS = ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Rss", "Private_Hugetlb", "Shared_Hugetlb")
KERNELS, QEMU_VERSIONS = v.version_condition("kernel"), v.version_condition("QEMU")


def regions(c: Checker, e: dict[str, Any]) -> list[RegionExpectation]:
    regions = []
    for i, raw in enumerate(e.get("regions") or []):
        key = f"expect.regions[{i}]"
        r = c.mapping(key, raw, ("mapping", "range", "phase", "faults", "kernels", "qemu"))
        rng = r.get("range")
        start = size = None
        if rng is not None:
            if not isinstance(rng, list) or len(rng) != 2:
                c.fail(f"{key}.range", rng, "[start IPA, size], e.g. [1G, 64M]")
            try:
                start, size = parse_bytes(rng[0]), parse_bytes(rng[1])
            except Bad:
                c.fail(f"{key}.range", rng, "[start IPA, size], e.g. [1G, 64M]")
        regions.append(RegionExpectation(
            mapping=c.get(r, "mapping", f"{key}.mapping", v.choice(MAPPINGS)), start=start, size=size,
            phase=c.get(r, "phase", f"{key}.phase", v.integer(0, 4)),
            faults=c.get(r, "faults", f"{key}.faults", v.bounds),
            kernels=c.get(r, "kernels", f"{key}.kernels", KERNELS),
            qemu=c.get(r, "qemu", f"{key}.qemu", QEMU_VERSIONS)))
    return regions


def smaps(c: Checker, e: dict[str, Any]) -> list[tuple[str | None, dict[str, tuple[int, int]]]]:
    smaps = []
    raw_smaps = e.get("smaps")
    blocks = raw_smaps if isinstance(raw_smaps, list) else [raw_smaps] if raw_smaps is not None else []
    for i, block in enumerate(blocks):
        key = "expect.smaps" + (f"[{i}]" if isinstance(raw_smaps, list) else "")
        values = {}
        for k, value in c.mapping(key, block, SMAPS_KEYS + ("kernels",)).items():
            if k != "kernels":
                values[k] = c.get({k: value}, k, f"{key}.{k}", byte_bounds)
        smaps.append((c.get(block or {}, "kernels", f"{key}.kernels", KERNELS), values))
    return smaps


def folios(c: Checker, e: dict[str, Any], vmm: str) -> dict[int, tuple[int, int]]:
    raw = e.get("folios")
    if raw is None:
        return {}
    if vmm != "probe":
        c.fail("expect.folios", raw, "no folios expectation with vmm qemu (the probe reads its own page table)")
    if not isinstance(raw, dict) or not raw:
        c.fail("expect.folios", raw, "a mapping of folio size to count, e.g. {64K: 256, 4K: 0}")
    out = {}
    for k, value in raw.items():
        try:
            size = parse_bytes(k)
        except Bad:
            size = 0
        if size < 4 * KiB or size & (size - 1):
            c.fail(f"expect.folios.{k}", k, "a folio size: a power of two from 4K, e.g. 64K or 2M")
        out[size] = c.get({k: value}, k, f"expect.folios.{k}", v.bounds)
    return out


def byte_bounds(value: Any) -> tuple[int, int]:
    lo, hi = (parse_bytes(x) for x in (value if isinstance(value, list) and len(value) == 2 else [value, value]))
    return lo, hi
