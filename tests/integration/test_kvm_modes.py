"""`kvmlab up --kvm-mode` / `--nested` on the real kernels: a mode the kernel cannot give is
refused before anything boots; sid's 7.x under QEMU 10 comes up nested (NV2)
(FIELD-NOTES §6: "VHE+NV2 mode initialized successfully")."""

from __future__ import annotations

import json

import pytest

from tests.conftest import kvmlab, qemu_pids_in

pytestmark = pytest.mark.boot


def test_nested_on_a_kernel_older_than_6_16_is_refused_before_boot(private_runtime):
    result = kvmlab("up", "--name", "nv-old", "--nested", "--kernel", "trixie")
    err = result.stderr.decode().strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1, err
    assert "lab.kvm_mode nested: L1's kernel is 6.12." in err and "older than 6.16" in err
    assert qemu_pids_in(private_runtime / "labs/nv-old") == []


def test_nested_on_sid_comes_up_with_nv2(private_runtime):
    try:
        up = kvmlab("up", "--name", "nv", "--nested", "--kernel", "sid")
        assert up.returncode == 0, up.stderr.decode()
        assert "KVM      nested (NV2) mode, /dev/kvm present" in up.stdout.decode()
        status = json.loads(kvmlab("status", "--name", "nv", "--json").stdout)
        assert status["kvm_mode"] == "nested (NV2)"
        cmdline = kvmlab("exec", "--name", "nv", "--", "cat", "/proc/cmdline").stdout.decode()
        assert "kvm-arm.mode=nested" in cmdline
    finally:
        kvmlab("down", "--name", "nv")
        assert qemu_pids_in(private_runtime / "labs/nv") == []
