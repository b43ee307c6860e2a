"""What the host sends into L1 for one scenario, built from the scenario and the contract
(lab/shared/contract.py): job.json, probe-job.json, the touch payload's parameters, and
the L2 Linux's kernel and initramfs (busybox and images/l2/init)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from lab.builder import payload
from lab.builder.build import Builder
from lab.builder.cpio import CpioWriter
from lab.core.paths import L2_IMAGE_DIR
from lab.scenarios.l2 import (
    GH_L3_CODE,
    GH_MEMORY,
    GH_STACKS,
    GH_TABLES,
    GH_TABLES2,
    GH_TABLES_MAX,
    PROBE_CODE_IPA,
    UART,
    l3_ranges,
    tlbi_span,
)
from lab.scenarios.model import Scenario
from lab.scenarios.staging import GUEST_KVMLAB, RunDir
from lab.shared import contract, stage2
from lab.shared.files import replacing

L2_INIT = L2_IMAGE_DIR / "init"
#: Seconds the probe VMM's own wait runs past the longest L1's runner gives it (the timeout
#: stretched): the runner's kill decides, rather than racing the probe's own end (and its
#: report, written as it ends) at the same instant.
PROBE_BACKSTOP = 5
L2_APPLETS = ("sh", "mount", "echo", "cut", "cat", "dd", "poweroff", "sync", "rm", "sleep", "head", "sha256sum")


def buffer_kb(scenario: Scenario) -> int:
    """Per-CPU ring buffer: every event may land on one CPU; ~48 bytes each, doubled."""
    if scenario.trace_buffer_kb:
        return scenario.trace_buffer_kb
    return int(min(256 * 1024, max(1024, math.ceil(scenario.expected_faults() * 96 / 1024))))


#: In a nested scenario's run directory: L2's stage-2 tables for L3 (lab/shared/stage2.py).
L2_TABLES = "l2-stage2.bin"
#: ... and as l2_hypervisor.remap leaves them (written over the first at its pause).
L2_TABLES_REMAPPED = "l2-stage2-remapped.bin"
#: ... and the second L3 guest's copy (l2_hypervisor.vmids: 2).
L2_TABLES_VMID2 = "l2-stage2-vmid2.bin"
#: The VMID L2 gives L3.
L3_VMID = 1


def make_probe_job(scenario: Scenario, run_guest: str) -> contract.ProbeJob:
    el2 = None
    h = scenario.l2_hypervisor
    if h is not None:  # gh.bin in slot 0, touch.bin (L3) and L2's tables beside it
        remap = contract.Blob(f"{run_guest}/{L2_TABLES_REMAPPED}", GH_TABLES) if h.remap else None
        blobs = [contract.Blob(f"{run_guest}/touch.bin", GH_L3_CODE),
                 contract.Blob(f"{run_guest}/{L2_TABLES}", GH_TABLES)]
        if h.vmids == 2:
            blobs.append(contract.Blob(f"{run_guest}/{L2_TABLES_VMID2}", GH_TABLES2))
        el2 = contract.GuestHypervisor(memory=GH_MEMORY, report=GH_STACKS, blobs=blobs,
                                       remap=remap, remap_at=f"pause {h.remap.at}" if h.remap else "")
    return contract.ProbeJob(
        vcpus=scenario.guest.vcpus, code_ipa=PROBE_CODE_IPA, uart=UART, el2=el2,
        payload=f"{run_guest}/{'gh.bin' if el2 else 'touch.bin'}", report=f"{run_guest}/probe.json",
        memslots=list(scenario.memslots),
        # The probe's own wait is a backstop past the longest L1 may give a guest that still
        # moves; the scenario's timeout proper is L1's runner's (l1.scenario.wait_vmm)
        actions=scenario.actions, timeout=scenario.timeout * contract.TIMEOUT_STRETCH + PROBE_BACKSTOP,
        eager_split=scenario.eager_split, folios=bool(scenario.folios))


def scenario_job(scenario: Scenario, l1_overrides: dict[str, Any] | None = None,
                 qemu: contract.QemuJob | None = None) -> contract.ScenarioJob:
    return contract.ScenarioJob(
        name=scenario.name, vmm="qemu" if scenario.vmm == "qemu" else "probe", timeout=scenario.timeout,
        l1=contract.L1Settings(**{**scenario.l1, **(l1_overrides or {})}),
        trace=contract.Trace(buffer_kb=buffer_kb(scenario)), kill_after=scenario.kill_after,
        kill_after_max=scenario.kill_after_max, repeat=scenario.repeat, qemu=qemu, granules=scenario.granules)


def l2_stage2(scenario: Scenario, remapped: bool = False, second: bool = False) -> stage2.Tables:
    """The stage-2 tables L2 maps L3 with, or (`remapped`) those its remap leaves, at the
    same place, or (`second`) the second L3 guest's copy (the model checked that they can
    be built)."""
    h = scenario.l2_hypervisor
    assert h is not None and (h.remap is not None or not remapped)
    return stage2.Tables(l3_ranges(h.after_remap() if remapped else h, scenario.memslots),
                         PROBE_CODE_IPA + (GH_TABLES2 if second else GH_TABLES), GH_TABLES_MAX)


def hypervisor_params(scenario: Scenario, tables: stage2.Tables, vttbr2: int = 0) -> payload.HypervisorParams:
    h = scenario.l2_hypervisor
    base, size, step = tlbi_span(h, scenario.memslots) if h is not None and h.remap is not None else (0, 0, 0)
    return payload.HypervisorParams(vttbr=tables.vttbr(L3_VMID), vtcr=stage2.VTCR, entry=PROBE_CODE_IPA + GH_L3_CODE,
                                    stacks=PROBE_CODE_IPA + GH_STACKS, report=PROBE_CODE_IPA + GH_STACKS, uart=UART,
                                    tlbi_base=base, tlbi_size=size, tlbi_step=step, vttbr2=vttbr2)


def nested_files(scenario: Scenario, gh_blob: bytes, gh_offset: int) -> dict[str, bytes]:
    """What a nested run adds to its run directory: gh.bin with its parameters, and L2's
    stage-2 tables (as at the start, as the remap leaves them, the second guest's)."""
    h = scenario.l2_hypervisor
    assert h is not None
    tables = l2_stage2(scenario)
    files = {L2_TABLES: tables.image()}
    if h.remap is not None:
        files[L2_TABLES_REMAPPED] = l2_stage2(scenario, remapped=True).image()
    vttbr2 = 0
    if h.vmids == 2:
        second = l2_stage2(scenario, second=True)
        files[L2_TABLES_VMID2] = second.image()
        vttbr2 = second.vttbr(L3_VMID + 1)
    files["gh.bin"] = payload.patched(gh_blob, gh_offset, hypervisor_params(scenario, tables, vttbr2))
    return files


def touch_params(scenario: Scenario) -> payload.TouchParams:
    g, h = scenario.guest, scenario.l2_hypervisor
    return payload.TouchParams(base=g.base, size=g.size, stride=g.stride, order=g.order, vcpus=g.vcpus, uart=UART,
                               passes=g.passes, pauses=g.pauses, forever=g.forever, whole=g.whole,
                               l2_tlbi=[g.pauses[h.remap.at - 1]] if h is not None and h.remap is not None else [])


def l2_initramfs(busybox: bytes, workload: str) -> bytes:
    writer = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "tmp"):
        writer.mkdir(directory)
    writer.chardev("dev/console", 5, 1)
    writer.add_bytes("bin/busybox", busybox, 0o755)
    for applet in L2_APPLETS:
        writer.symlink(f"bin/{applet}", "busybox")
    init = L2_INIT.read_text().replace("@WORKLOAD@", workload or "true")
    writer.add_bytes("init", init.encode(), 0o755)
    return writer.getvalue()


def l2_kernel(builder: Builder, images: dict[str, Any], scenarios: list[Scenario]) -> Path | None:
    """The L2 Linux guests' kernel if one of `scenarios` boots an L2 Linux: built once (with
    the builder's progress; a suite asks before it starts) and cached. `images`: the lab
    config's images section (mirror, updates)."""
    if not any(s.guest.kind == "linux" for s in scenarios):
        return None
    return builder.l2_kernel(images.get("mirror", ""), bool(images.get("updates")))


def l2_files(builder: Builder, state: dict[str, Any], share: Path, scenario: Scenario,
             where: RunDir) -> dict[str, str]:
    """The L2 Linux guest: the L2 kernel (lab/builder/l2kernel.py, into the share once per
    lab and version) and a busybox initramfs whose /init runs the scenario's workload, then
    powers off. Returns QEMU's kernel, initrd and append, as L1 sees them."""
    built = l2_kernel(builder, state["config"].get("images", {}), [scenario])
    assert built is not None
    name = f"Image-{built.parent.name.rsplit('-', 1)[-1][:12]}"
    image = share / ".kvmlab" / "l2" / name
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        with replacing(image) as tmp:
            shutil.copyfile(built, tmp)
    busybox = Path(state["rootfs"]["root"]) / "usr/bin/busybox"
    (where.host / "l2-initrd.cpio").write_bytes(l2_initramfs(busybox.read_bytes(), scenario.guest.workload))
    return {"kernel": f"{GUEST_KVMLAB}/l2/{name}", "initrd": f"{where.guest}/l2-initrd.cpio",
            "append": "console=ttyAMA0 panic=-1 quiet rdinit=/init"}
